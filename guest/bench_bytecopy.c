/* bench_bytecopy.c -> bench_bytecopy.img (benchmark): copy shared big.bin
 * to private copy.bin with the byte protocol, 127 bytes per request (one
 * exit per byte).  Output: "copied <n>\n". */
#include "hv.h"

void guest_main(void)
{
    char buf[127];
    long total = 0;
    int in, out;

    in = f_open("big.bin", O_READ);
    out = f_open("copy.bin", O_WRITE);
    if (in < 0 || out < 0) {
        puts_e9("open failed\n");
        return;
    }
    for (;;) {
        int n = f_read(in, buf, sizeof(buf));
        if (n < 0) {
            puts_e9("read error\n");
            return;
        }
        if (n == 0)
            break;
        if (f_write(out, buf, n) != n) {
            puts_e9("write error\n");
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
