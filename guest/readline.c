/* readline.c -> readline.img (version C): 8 bytes of stdin in ONE rep insb.
 * stdin "abcdefgh" -> "type 8 chars: you typed: abcdefgh\n".
 * (At end of stdin the missing bytes read as 0xFF.) */
#include "hv.h"

void guest_main(void)
{
    char buf[8];

    puts_e9("type 8 chars: ");
    serial_read(buf, sizeof(buf));      /* one rep insb, 8 bytes        */
    puts_e9("you typed: ");
    serial_write(buf, sizeof(buf));     /* one rep outsb                */
    putchar_e9('\n');
}
