/* echo.c -> echo.img (version A): serial input, one byte at a time.
 * Every byte read with one "in" is written back with one "out", until the
 * hypervisor answers 0xFF (end of stdin).  stdin "abc" -> "abc[eof]\n". */
#include "hv.h"

void guest_main(void)
{
    for (;;) {
        uint8_t c = inb(SERIAL_PORT);   /* one in: next stdin byte      */
        if (c == 0xFF)                  /* 0xFF = end of file           */
            break;
        outb(SERIAL_PORT, c);           /* one out: echo it             */
    }
    puts_e9("[eof]\n");
}
