/* chunks.c -> chunks.img (version C): f_read and f_write take any count.
 * One f_write of 300 bytes to a new private chunks.bin, then one f_read of
 * 300; the library splits each into requests of at most 127 bytes (127,
 * 127, 46), which --trace shows.  Then a read at end of file answers 0, and
 * an f_read of 400 from the start returns the 300 bytes there are.
 * Output (fresh files directory, as write appends):
 *   f_write 300 -> 300\n
 *   f_read 300 -> 300\n
 *   f_read at end -> 0\n
 *   f_read 400 -> 300\n
 *   checksum 5773598 same\n                                           */
#include "hv.h"

#define SIZE 300

static uint8_t data[SIZE];
static uint8_t back[400];

/* Order-sensitive: sum of (i + 1) * byte. */
static unsigned long checksum(const uint8_t *p, int n)
{
    unsigned long sum = 0;
    int i;

    for (i = 0; i < n; i++)
        sum += (unsigned long)(i + 1) * p[i];
    return sum;
}

static void report(const char *what, int n)
{
    puts_e9(what);
    puts_e9(" -> ");
    put_dec(n);
    putchar_e9('\n');
}

void guest_main(void)
{
    int vfd, i, n;

    for (i = 0; i < SIZE; i++)
        data[i] = (uint8_t)(i * 7 + 3);

    vfd = f_open("chunks.bin", O_WRITE);
    if (vfd < 0) {
        puts_e9("cannot create chunks.bin\n");
        return;
    }
    report("f_write 300", f_write(vfd, data, SIZE));
    f_close(vfd);

    vfd = f_open("chunks.bin", O_READ);
    if (vfd < 0) {
        puts_e9("cannot open chunks.bin\n");
        return;
    }
    report("f_read 300", f_read(vfd, back, SIZE));
    report("f_read at end", f_read(vfd, back + SIZE, 10));
    f_close(vfd);

    vfd = f_open("chunks.bin", O_READ);         /* from the start again */
    n = f_read(vfd, back, sizeof(back));
    report("f_read 400", n);
    f_close(vfd);

    puts_e9("checksum ");
    put_udec(checksum(back, n));
    puts_e9(checksum(back, n) == checksum(data, SIZE) && n == SIZE ? " same\n" : " DIFFERENT\n");
}
