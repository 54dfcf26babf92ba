/* spin.c -> spin.img (version A): never halts (for --timeout / Ctrl-C). */
#include "hv.h"

void guest_main(void)
{
    puts_e9("spinning\n");
    for (;;)
        asm volatile("jmp .");          /* jump to itself forever        */
}
