/* ports.c -> ports.img (version A): ports the hypervisor does not know.
 * out to 0x80 and 0x3F8 must be ignored, in from 0x81 must give 0xFF
 * (an empty ISA bus); the hypervisor warns on stderr once per port. */
#include "hv.h"

void guest_main(void)
{
    uint8_t v;

    outb(0x80, 0x42);                   /* POST code port: ignored       */
    v = inb(0x81);                      /* unknown port: expect 0xff     */
    outb(0x3F8, 'A');                   /* COM1 (not emulated): ignored  */
    puts_e9("in 0x81 = 0x");
    put_hex(v);
    puts_e9("\ndone\n");
}
