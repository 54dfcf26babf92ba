/* bytes.c -> bytes.img (version C): files are binary safe.
 * Writes the 256 byte values 0..255 to a new private bytes.bin (chunks of
 * at most 127 bytes), reads it back and compares.
 * Output: "bytes ok\n", or "bytes BAD at <i>\n" for the first wrong offset
 * (256 if the file is longer or shorter than 256 bytes; run it with a fresh
 * files directory, since write appends). */
#include "hv.h"

void guest_main(void)
{
    uint8_t data[256];
    uint8_t back[256 + 127];
    int total = 0;
    int vfd, i;

    for (i = 0; i < 256; i++)
        data[i] = (uint8_t)i;

    vfd = f_open("bytes.bin", O_WRITE);
    if (vfd < 0) {
        puts_e9("cannot create bytes.bin\n");
        return;
    }
    for (i = 0; i < 256; ) {
        int chunk = 256 - i > 127 ? 127 : 256 - i;   /* 127, 127, 2 */
        int n = f_write(vfd, data + i, chunk);
        if (n <= 0) {
            puts_e9("write error\n");
            return;
        }
        i += n;
    }
    f_close(vfd);

    vfd = f_open("bytes.bin", O_READ);
    if (vfd < 0) {
        puts_e9("cannot open bytes.bin\n");
        return;
    }
    for (;;) {
        /* read at most one byte past 256, to notice a longer file */
        int room = 256 + 1 - total;
        int n = f_read(vfd, back + total, room > 127 ? 127 : room);
        if (n < 0) {
            puts_e9("read error\n");
            return;
        }
        if (n == 0)
            break;
        total += n;
        if (total > 256)
            break;
    }
    f_close(vfd);

    for (i = 0; i < 256 && i < total; i++)
        if (back[i] != data[i])
            break;
    if (i == 256 && total == 256) {
        puts_e9("bytes ok\n");
    } else {
        puts_e9("bytes BAD at ");
        put_dec(i);
        putchar_e9('\n');
    }
}
