/* edge.c -> edge.img (version A): a load from the first address past RAM.
 * With -m 2, RAM is [0, 0x200000): 0x200000 is the first address beyond it,
 * which the page tables do not map.  The load page-faults (CR2 = 0x200000);
 * there is no interrupt table, so the guest ends in a triple fault, and the
 * crash report says that the address lies beyond the 2 MiB of RAM (the byte
 * below it, 0x1fffff, is the last byte of RAM, in the page tables).  With
 * -m 4 or -m 8 the address is RAM, and the guest halts after "loaded". */
#include "hv.h"

/* The end of the RAM of -m 2: its first byte past the end. */
#define RAM_END_2M 0x200000UL

/* noinline: the crash report names this function, not its caller. */
static void __attribute__((noinline)) load_end(void)
{
    (void)*(volatile uint8_t *)RAM_END_2M;     /* -m 2: page fault, triple fault */
}

void guest_main(void)
{
    puts_e9("loading from 0x200000\n");
    load_end();
    puts_e9("loaded\n");
}
