/* hello.c -> guest.img (version A): the classic first guest. */
#include "hv.h"

void guest_main(void)
{
    puts_e9("Hello, world!\n");
}                                   /* returning to _start executes hlt */
