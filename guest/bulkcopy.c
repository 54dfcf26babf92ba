/* bulkcopy.c -> bulkcopy.img (version C): copy a shared file with the bulk
 * commands (SPEC section 6): the hypervisor moves up to 64 KiB per request
 * directly between the host file and guest RAM.  Run with -f .../big.bin
 * (any size up to 1 MiB).  Output: "bulk copied <n> bytes\n". */
#include "hv.h"

#define BUF      ((uint8_t *)SCRATCH_BASE)  /* 64 KiB at 0x100000        */
#define BUF_SIZE 0x10000u

void guest_main(void)
{
    long total = 0;
    int in, out;

    in = f_open("big.bin", O_READ);
    if (in < 0) {
        puts_e9("cannot open big.bin\n");
        return;
    }
    out = f_open("big_copy.bin", O_WRITE);
    if (out < 0) {
        puts_e9("cannot create big_copy.bin\n");
        return;
    }
    for (;;) {
        long n = f_read_bulk(in, BUF, BUF_SIZE);
        if (n < 0) {
            puts_e9("bulk read error\n");
            return;
        }
        if (n == 0)                             /* end of file          */
            break;
        if (f_write_bulk(out, BUF, (unsigned)n) != n) {
            puts_e9("bulk write error\n");
            return;
        }
        total += n;
    }
    f_close(in);
    f_close(out);
    puts_e9("bulk copied ");
    put_dec(total);
    puts_e9(" bytes\n");
}
