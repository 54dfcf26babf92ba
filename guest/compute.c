/* compute.c -> compute.img (version B): a compute-bound guest for the
 * benchmark.  200000 steps of a linear congruential generator; x is
 * volatile so the compiler cannot shorten the loop.  Two VMs in parallel
 * (one thread each) should take about as long as one.
 * Output: "compute done 2922840257\n". */
#include "hv.h"

#define STEPS 200000

void guest_main(void)
{
    volatile uint32_t x = 1;            /* kept in memory on every step  */
    unsigned i;

    for (i = 0; i < STEPS; i++)
        x = x * 1103515245u + 12345u;   /* arithmetic modulo 2^32        */
    puts_e9("compute done ");
    put_udec(x);
    putchar_e9('\n');
}
