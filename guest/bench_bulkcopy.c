/* bench_bulkcopy.c -> bench_bulkcopy.img (benchmark): copy shared big.bin
 * to private copy.bin with the bulk commands, 64 KiB buffer at 0x100000.
 * Output: "copied <n>\n". */
#include "hv.h"

#define BUF      ((uint8_t *)SCRATCH_BASE)
#define BUF_SIZE 0x10000u

void guest_main(void)
{
    long total = 0;
    int in, out;

    in = f_open("big.bin", O_READ);
    out = f_open("copy.bin", O_WRITE);
    if (in < 0 || out < 0) {
        puts_e9("open failed\n");
        return;
    }
    for (;;) {
        long n = f_read_bulk(in, BUF, BUF_SIZE);
        if (n < 0) {
            puts_e9("bulk read error\n");
            return;
        }
        if (n == 0)
            break;
        if (f_write_bulk(out, BUF, (unsigned)n) != n) {
            puts_e9("bulk write error\n");
            return;
        }
        total += n;
    }
    f_close(in);
    f_close(out);
    puts_e9("copied ");
    put_dec(total);
    putchar_e9('\n');
}
