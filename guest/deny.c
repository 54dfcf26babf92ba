/* deny.c -> deny.img (version C): names a guest may not open.
 * A guest sees only plain file names: no '/', no "." or "..", not empty,
 * and only its own or shared files.  Every line should end in "-> -1".
 * (Send it with -f ../guest/shared.txt, so that only the path forms fail.) */
#include "hv.h"

static const char *const names[] = {
    "../shared.txt",   /* escape the private directory   */
    "/etc/passwd",     /* absolute path                  */
    ".",               /* the directory itself           */
    "..",              /* the parent directory           */
    "a/b",             /* a path, not a plain name       */
    "missing.txt",     /* plain name, but no such file   */
    "",                /* empty name (length byte 0)     */
};

void guest_main(void)
{
    unsigned i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int r = f_open(names[i], O_READ);

        puts_e9("open ");
        puts_e9(names[i][0] ? names[i] : "\"\"");
        puts_e9(" -> ");
        put_dec(r);
        putchar_e9('\n');
        if (r >= 0)
            f_close(r);
    }
    puts_e9("deny done\n");
}
