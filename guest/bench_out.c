/* bench_out.c -> bench_out.img (benchmark): 250,000 one-byte outs to 0xE9:
 * 5000 lines of 49 'x' and a '\n' (50 bytes each). */
#include "hv.h"

#define LINES 5000                      /* 5000 * 50 = 250,000          */

void guest_main(void)
{
    unsigned line, col;

    for (line = 0; line < LINES; line++) {
        for (col = 0; col < 49; col++)
            outb(SERIAL_PORT, 'x');
        outb(SERIAL_PORT, '\n');
    }
}
