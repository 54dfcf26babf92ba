/* beyond.c -> beyond.img (version A): a store past the end of RAM.
 * Run with -m 2: RAM is [0, 2 MiB), so 0x300000 is not mapped by the page
 * tables.  The store page-faults (CR2 = 0x300000); there is no interrupt
 * table, so the fault ends in a triple fault with RIP on the store, and the
 * crash report says that the address lies beyond the RAM.  (With -m 4 or
 * -m 8 the address is RAM and the guest halts after "stored".) */
#include "hv.h"

/* Where the guest stores: 3 MiB, past the RAM of -m 2. */
#define FAR_ADDRESS 0x300000UL

/* noinline: the crash report names this function, not its caller. */
static void __attribute__((noinline)) store_far(void)
{
    volatile uint64_t *p = (volatile uint64_t *)FAR_ADDRESS;

    *p = 42;                            /* -m 2: page fault, triple fault */
}

void guest_main(void)
{
    puts_e9("storing to 0x300000\n");
    store_far();
    puts_e9("stored\n");
}
