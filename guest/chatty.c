/* chatty.c -> chatty.img (all versions): enough serial output for port
 * 0xE9 to go through KVM's coalesced ring (after 256 bytes), then what the
 * first byte of stdin asks for:
 *   'w'  a 2-byte out to 0xE9, a guest error ("not reached" must not appear)
 *   's'  rep outsb of a line, then hlt
 *   'l'  "ready" then compute for ever without an exit (the line must still
 *        show up on a terminal while the guest computes)
 *   else "done" then hlt
 * Output before that: 8 lines "line N: " + 56 dots (64 bytes each). */
#include "hv.h"

void guest_main(void)
{
    static const char outs[] = "rep outsb through the ring\n";
    int i, j;
    uint8_t c;

    for (i = 0; i < 8; i++) {
        puts_e9("line ");
        put_dec(i);
        puts_e9(": ");
        for (j = 0; j < 56; j++)
            outb(SERIAL_PORT, '.');
        outb(SERIAL_PORT, '\n');
    }
    c = inb(SERIAL_PORT);
    if (c == 'w') {
        puts_e9("wide out\n");
        outw(SERIAL_PORT, 0x4241);      /* 2-byte out ("AB"): guest error */
        puts_e9("not reached\n");
    } else if (c == 's') {
        serial_write(outs, sizeof(outs) - 1);
    } else if (c == 'l') {
        puts_e9("ready\n");
        for (;;)
            asm volatile("jmp .");      /* compute for ever, no exit     */
    } else {
        puts_e9("done\n");
    }
}
