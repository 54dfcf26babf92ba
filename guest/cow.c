/* cow.c -> cow.img (version C): copy-on-write of a shared file.
 * Opening shared.txt for write makes the hypervisor copy it into this VM's
 * private directory; the append goes to the copy, the host original and
 * the other VMs are not affected.  Run with: -f ../guest/shared.txt
 * Output (fresh files directory):
 *   shared.txt before:\n <shared.txt>
 *   shared.txt after:\n  <shared.txt>appended by guest\n
 *   done\n                                                           */
#include "hv.h"

/* Append a string to a file (opened for write = append/create). */
static int append(const char *name, const char *text)
{
    int vfd = f_open(name, O_WRITE);
    int len = strlen(text);

    if (vfd < 0) {
        puts_e9("cannot open ");
        puts_e9(name);
        puts_e9(" for write\n");
        return -1;
    }
    if (f_write(vfd, text, len) != len) {
        puts_e9("write error\n");
        f_close(vfd);
        return -1;
    }
    return f_close(vfd);
}

void guest_main(void)
{
    puts_e9("shared.txt before:\n");
    cat_file("shared.txt");

    append("shared.txt", "appended by guest\n");   /* private copy made */

    puts_e9("shared.txt after:\n");
    cat_file("shared.txt");                         /* reads the copy    */

    append("notes.txt", "private note\n");          /* new private file  */
    puts_e9("done\n");
}
