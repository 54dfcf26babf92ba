/* bench_step.c -> bench_step.img (benchmark, make bench): a loop of 20,000
 * rounds of two instructions, `dec` and `jnz`, and nothing else: 40,005
 * instructions from the first to the `hlt` (3 in _start, 40,002 here).
 * The stepping benchmark runs it under gdb's software watchpoint, one VM exit
 * per instruction, and once freely, for the cost of the instructions alone. */
#include "hv.h"

void guest_main(void)
{
    unsigned long n = 20000;

    asm volatile("1: dec %0\n\tjnz 1b" : "+r"(n) : : "cc");
}
