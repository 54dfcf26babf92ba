/* bench_bytecopy.c -> bench_bytecopy.img (benchmark): copy shared big.bin
 * to private copy.bin with the byte protocol, 127 bytes per request (one
 * exit per byte).  Output: "copied <n>\n". */
#include "hv.h"

void guest_main(void)
{
    long total = copy_file("big.bin", "copy.bin", 0, 0);

    if (total < 0)
        return;                                 /* copy_file said why */
    puts_e9("copied ");
    put_dec(total);
    putchar_e9('\n');
}
