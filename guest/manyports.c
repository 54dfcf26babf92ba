/* manyports.c -> manyports.img (all versions): 1,000 ports the hypervisor does not know.
 * Every out is ignored and every in reads 0xFF; the hypervisor warns once for each of the
 * first 16 ports, then says once that it reports no more (docs/REFERENCE.md §4). */
#include "hv.h"

void guest_main(void)
{
    unsigned ff = 0;

    for (uint16_t port = 0x400; port < 0x400 + 1000; port++) {
        if (port & 1)
            ff += inb(port) == 0xFF;
        else
            outb(port, 0x42);
    }
    puts_e9("500 ins read 0xff: ");
    puts_e9(ff == 500 ? "yes\n" : "no\n");
}
