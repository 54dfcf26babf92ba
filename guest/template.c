/* template.c -> template.img: a guest to start from.
 *
 *   cp template.c mine.c        (in guest/)
 *   make mine.img               (the pattern rule builds NAME.img from NAME.c)
 *   cd ../version_c && ./mini_hypervisor -m 4 -p 2 -g ../guest/mine.img
 *
 * The library (hv.h) gives you the serial port (puts_e9, put_dec, put_hex,
 * getchar_e9, ...) and, in version C, files (f_open, f_read, f_write,
 * f_close).  There is no libc: no printf, no malloc, no floating point.
 * A file (version C): f_open("out.txt", O_WRITE) creates it in this VM's
 * private directory <stem>_vm<N>_files/; f_write(vfd, buf, n) appends n
 * bytes; f_close(vfd).  See ../docs/REFERENCE.md §5.
 *
 * Output:
 *   template: hello from the guest\n
 *   1 squared is 1\n2 squared is 4\n3 squared is 9\n
 *   template: done\n                                                  */
#include "hv.h"

static int square(int x)
{
    return x * x;
}

void guest_main(void)           /* hv.c's _start, at address 0, calls it */
{
    int i;

    puts_e9("template: hello from the guest\n");
    for (i = 1; i <= 3; i++) {
        put_dec(i);
        puts_e9(" squared is ");
        put_dec(square(i));
        putchar_e9('\n');
    }
    puts_e9("template: done\n");
}                               /* returning halts the VM: exit status 0 */
