/* flood.c -> flood.img (all versions): what a stop signal must not lose.
 * 1000 numbered lines (33,890 bytes: more than one block of stdout, so
 * part of it is still in the hypervisor's buffer at the end), then one
 * out to the unknown port 0x80, whose warning on stderr says that every
 * byte has reached the serial port, then computing for ever without an
 * exit.  Line i is "flood line <i> of 1000 ..........\n" (i from 0, no
 * leading zeros). */
#include "hv.h"

void guest_main(void)
{
    int i;

    for (i = 0; i < 1000; i++) {
        puts_e9("flood line ");
        put_dec(i);
        puts_e9(" of 1000 ..........\n");
    }
    outb(0x80, 0);                      /* the sign: a warning on stderr */
    for (;;)
        asm volatile("jmp .");          /* compute for ever, no exit     */
}
