/* wide.c -> wide.img (version A): a 2-byte access to the serial port.
 * Port 0xE9 only supports 1-byte accesses, so the hypervisor must stop
 * this VM with a guest-error diagnostic; "not reached" must not appear. */
#include "hv.h"

void guest_main(void)
{
    puts_e9("wide out\n");
    outw(SERIAL_PORT, 0x4241);          /* 2-byte out ("AB"): guest error */
    puts_e9("not reached\n");
}
