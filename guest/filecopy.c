/* filecopy.c -> filecopy.img (version C): copy a shared file into a new
 * private file with the byte protocol (f_read/f_write, 127-byte chunks),
 * then print the copy.  Run with: -f ../guest/shared.txt
 * Output: "copied <n> bytes\n" followed by the content of copy.txt.
 * (Write appends: in a files directory kept from an earlier run, copy.txt
 * then contains the text twice.) */
#include "hv.h"

void guest_main(void)
{
    long total = copy_file("shared.txt", "copy.txt", 0, 0);

    if (total < 0)
        return;                                 /* copy_file said why */
    puts_e9("copied ");
    put_dec(total);
    puts_e9(" bytes\n");
    cat_file("copy.txt");
}
