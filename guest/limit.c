/* limit.c -> limit.img (version C): at most 16 open files per VM.
 * Opens shared.txt 17 times without closing.  Run with -f ../guest/shared.txt
 * Output: "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 -1\nlimit done\n"
 * (assuming the hypervisor hands out vfds 0, 1, 2, ... in order). */
#include "hv.h"

#define TRIES 17

void guest_main(void)
{
    int vfd[TRIES];
    int i;

    for (i = 0; i < TRIES; i++) {
        vfd[i] = f_open("shared.txt", O_READ);
        if (i > 0)
            putchar_e9(' ');
        put_dec(vfd[i]);
    }
    putchar_e9('\n');
    for (i = 0; i < TRIES; i++)
        if (vfd[i] >= 0)
            f_close(vfd[i]);
    puts_e9("limit done\n");
}
