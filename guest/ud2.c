/* ud2.c -> ud2.img (version A): an invalid instruction in a function.
 * bad_opcode() executes ud2 (#UD, "undefined instruction").  There is no
 * interrupt table, so the guest ends in a triple fault with RIP on the ud2,
 * and the crash report names the instruction and its function. */
#include "hv.h"

/* noinline: the crash report names this function, not its caller. */
void __attribute__((noinline)) bad_opcode(void)
{
    asm volatile("ud2");                /* #UD -> triple fault */
}

void guest_main(void)
{
    puts_e9("running ud2\n");
    bad_opcode();
    puts_e9("not reached\n");
}
