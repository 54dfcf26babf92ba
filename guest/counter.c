/* counter.c -> counter.img (version B): lines with pauses in between, so
 * that two VMs' lines interleave (but never inside a line). */
#include "hv.h"

void guest_main(void)
{
    volatile unsigned i;                /* volatile: the loop is really run */
    long n;

    for (n = 1; n <= 5; n++) {
        puts_e9("count ");
        put_dec(n);
        putchar_e9('\n');
        for (i = 0; i < 3000; i++)      /* short busy wait               */
            ;
    }
}
