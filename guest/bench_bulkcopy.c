/* bench_bulkcopy.c -> bench_bulkcopy.img (benchmark): copy shared big.bin
 * to private copy.bin with the bulk commands, 64 KiB buffer at 0x100000.
 * Output: "copied <n>\n". */
#include "hv.h"

#define BUF      ((uint8_t *)SCRATCH_BASE)  /* 64 KiB at 0x100000 */
#define BUF_SIZE 0x10000u

void guest_main(void)
{
    long total = copy_file("big.bin", "copy.bin", BUF, BUF_SIZE);

    if (total < 0)
        return;                                 /* copy_file said why */
    puts_e9("copied ");
    put_dec(total);
    putchar_e9('\n');
}
