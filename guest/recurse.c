/* recurse.c -> recurse.img (version A): a runaway recursion.
 * sum_to(1000000) adds 1 + 2 + ... + n recursively, one stack frame of
 * about 80 bytes per number: 80 MB of stack, where the guest has at most a
 * few MiB.  The stack grows down from just below the page tables, through
 * the free RAM, into the image itself, overwriting the code; the guest then
 * crashes (a triple fault, there is no interrupt table) with RSP below the
 * end of the image or outside RAM, and the crash report says that the stack
 * overflowed.  It takes a fraction of a second with -m 2. */
#include "hv.h"

/* The sum 1 + 2 + ... + n, recursively: one stack frame per number. */
unsigned long sum_to(unsigned long n)
{
    volatile unsigned long frame[8];    /* 64 bytes of locals per call */

    frame[0] = n;
    if (n == 0)
        return 0;
    return sum_to(n - 1) + frame[0];
}

void guest_main(void)
{
    puts_e9("recursing\n");
    put_udec(sum_to(1000000));
    puts_e9("\nnot reached\n");
}
