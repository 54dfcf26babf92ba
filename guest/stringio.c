/* stringio.c -> stringio.img (version A): string I/O on port 0xE9.
 * One "rep outsb" is one KVM exit that carries several bytes (count > 1);
 * the hypervisor must handle every byte of it, in order.
 * stdin "abcdef" -> "rep outsb ok\ngot: abcdef\n". */
#include "hv.h"

void guest_main(void)
{
    static const char ok[] = "rep outsb ok\n";
    char in[6];
    char out[5 + 6 + 1];

    serial_write(ok, sizeof(ok) - 1);   /* ONE rep outsb                 */
    serial_read(in, 6);                 /* ONE rep insb of 6 bytes       */

    memcpy(out, "got: ", 5);
    memcpy(out + 5, in, 6);
    out[11] = '\n';
    serial_write(out, sizeof(out));     /* ONE rep outsb of 12 bytes     */
}
