/* filecopy.c -> filecopy.img (version C): copy a shared file into a new
 * private file with the byte protocol (f_read/f_write, 127-byte chunks),
 * then print the copy.  Run with: -f ../guest/shared.txt
 * Output: "copied <n> bytes\n" followed by the content of copy.txt.
 * (Write appends: in a files directory kept from an earlier run, copy.txt
 * then contains the text twice.) */
#include "hv.h"

void guest_main(void)
{
    char buf[127];
    long total = 0;
    int in, out;

    in = f_open("shared.txt", O_READ);
    if (in < 0) {
        puts_e9("cannot open shared.txt\n");
        return;
    }
    out = f_open("copy.txt", O_WRITE);          /* created, private    */
    if (out < 0) {
        puts_e9("cannot create copy.txt\n");
        return;
    }
    for (;;) {
        int n = f_read(in, buf, sizeof(buf));
        if (n < 0) {
            puts_e9("read error\n");
            return;
        }
        if (n == 0)                             /* end of file         */
            break;
        if (f_write(out, buf, n) != n) {
            puts_e9("write error\n");
            return;
        }
        total += n;
    }
    f_close(in);
    f_close(out);

    puts_e9("copied ");
    put_dec(total);
    puts_e9(" bytes\n");
    cat_file("copy.txt");
}
