/* bulkcopy.c -> bulkcopy.img (version C): copy a shared file with the bulk
 * commands (docs/REFERENCE.md §6): the hypervisor moves up to 64 KiB per request
 * directly between the host file and guest RAM.  Run with -f .../big.bin
 * (any size up to 1 MiB).  Output: "bulk copied <n> bytes\n". */
#include "hv.h"

#define BUF      ((uint8_t *)SCRATCH_BASE)  /* 64 KiB at 0x100000 */
#define BUF_SIZE 0x10000u

void guest_main(void)
{
    long total = copy_file("big.bin", "big_copy.bin", BUF, BUF_SIZE);

    if (total < 0)
        return;                                 /* copy_file said why */
    puts_e9("bulk copied ");
    put_dec(total);
    puts_e9(" bytes\n");
}
