/* bench_outsb.c -> bench_outsb.img (benchmark): the same 250,000 bytes as
 * bench_out (5000 lines of 49 'x' and a '\n') written with ONE rep outsb
 * from a buffer at SCRATCH_BASE, which rep stosb fills with 'x' first. */
#include "hv.h"

#define LINE  50u
#define LINES 5000u                     /* 5000 * 50 = 250,000          */
#define BUF   ((char *)SCRATCH_BASE)

void guest_main(void)
{
    void *dst = BUF;
    unsigned long count = LINE * LINES;
    unsigned i;

    asm volatile("rep stosb"            /* count times: *rdi++ = al    */
                 : "+D"(dst), "+c"(count)
                 : "a"('x')
                 : "memory");
    for (i = 1; i <= LINES; i++)
        BUF[i * LINE - 1] = '\n';
    serial_write(BUF, LINE * LINES);
}
