/* bench_out.c -> bench_out.img (benchmark): 1,000,000 one-byte outs to
 * 0xE9: 15625 lines of 63 'x' and a '\n' (64 bytes each). */
#include "hv.h"

#define LINES 15625                     /* 15625 * 64 = 1,000,000       */

void guest_main(void)
{
    unsigned line, col;

    for (line = 0; line < LINES; line++) {
        for (col = 0; col < 63; col++)
            outb(SERIAL_PORT, 'x');
        outb(SERIAL_PORT, '\n');
    }
}
