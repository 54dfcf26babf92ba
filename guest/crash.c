/* crash.c -> crash.img (version A): an exception without an IDT.
 * ud2 raises #UD; there is no IDT, so the CPU cannot deliver it, which
 * escalates to a double and then a triple fault (KVM_EXIT_SHUTDOWN). */
#include "hv.h"

void guest_main(void)
{
    puts_e9("crashing now\n");
    asm volatile("ud2");                /* undefined instruction -> triple fault */
    puts_e9("not reached\n");
}
