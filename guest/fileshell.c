/*
 * fileshell.c -> fileshell.img (version C): a test harness for the file
 * protocol, driven by lines on the serial port (stdin of the hypervisor).
 *
 * One command per line ('\n' ends a line, a trailing '\r' is dropped).
 * Every command prints exactly one line; an empty line prints nothing.
 * Numbers: <dec> is decimal with an optional '-' (or 0x... hex);
 * <hex> is hexadecimal with an optional 0x; <hexbytes> is hex pairs
 * without spaces ("48690a"), possibly empty.  Values such as vfd and flags
 * are sent as their low byte, so "c -1" sends vfd 0xFF.
 *
 *   o <flags> <name>        f_open(name, flags)        -> result, e.g. 3 or -1
 *                           name = rest of the line after one space
 *                           (may be empty: "o 0" or "o 0 ")
 *   c <vfd>                 f_close(vfd)               -> result
 *   w <vfd> <hexbytes>      f_write_request(vfd, bytes, count) -> result
 *   r <vfd> <count>         f_read_request(vfd, buf, count) -> "<n> <hexbytes>"
 *                                                         ("<n> " if none)
 *   x <hexbytes>            raw 1-byte outs to 0x0278  -> ok
 *   i <k>                   k raw 1-byte ins from 0x0278 -> hex of the k bytes
 *   I                       one raw 4-byte in (inl)    -> 8 hex digits
 *   L <hex>                 one raw 4-byte out (outl)  -> ok
 *   B r|w <vfd> <addr> <len>  f_read_bulk / f_write_bulk on guest address
 *                           <addr> (hex) and <len> (dec) -> result (-1 error)
 *   m <addr> <hexbytes>     store bytes at guest address <addr> (hex) -> ok
 *   d <addr> <len>          print <len> bytes at guest address <addr> as hex
 *   q                       halt (prints nothing); end of stdin also halts
 *   anything else, or bad arguments -> ?
 *
 * w and r send exactly ONE request each (f_write_request/f_read_request,
 * not the splitting f_write/f_read), so they show the protocol as it is:
 * count 0..255 (others: -1 without a request), at most 127 per answer.
 * Use the scratch area 0x100000 .. 0x17ffff (SCRATCH_BASE, 512 KiB) for
 * B/m/d: this program does not use it.  m/d on addresses outside RAM
 * crash the guest (page fault without an IDT); B only passes the address
 * to the hypervisor, which must refuse ranges outside RAM.
 * A last line without '\n' before end of stdin is still executed.
 */
#include "hv.h"

#define LINE_MAX 1024                   /* longer lines answer "?"      */

static char line[LINE_MAX];
static uint8_t bytes[LINE_MAX / 2];     /* decoded <hexbytes>           */
static uint8_t rbuf[256];               /* r buffer (count <= 255)      */

/* ---- reading a line ---------------------------------------------- */

/* Returns the line length, or -1 at EOF with nothing read, or -2 if the
 * line was too long.  *eof is set when stdin ended. */
static int read_line(int *eof)
{
    int n = 0, too_long = 0;

    for (;;) {
        int c = getchar_e9();
        if (c < 0) {                    /* 0xFF: end of stdin           */
            *eof = 1;
            if (n == 0 && !too_long)
                return -1;
            break;
        }
        if (c == '\n')
            break;
        if (n < LINE_MAX - 1)
            line[n++] = (char)c;
        else
            too_long = 1;
    }
    if (n > 0 && line[n - 1] == '\r')
        n--;
    line[n] = '\0';
    return too_long ? -2 : n;
}

/* ---- parsing helpers: each advances *p and returns 1 on success --- */

static void skip_spaces(const char **p)
{
    while (**p == ' ')
        (*p)++;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* hex number, optional 0x prefix */
static int parse_hex(const char **p, unsigned long *out)
{
    unsigned long v = 0;
    int digits = 0;

    skip_spaces(p);
    if ((*p)[0] == '0' && ((*p)[1] == 'x' || (*p)[1] == 'X'))
        *p += 2;
    while (hex_value(**p) >= 0) {
        v = (v << 4) | hex_value(**p);
        (*p)++;
        digits++;
    }
    *out = v;
    return digits > 0;
}

/* decimal number with optional '-', or 0x... hex */
static int parse_dec(const char **p, long *out)
{
    long v = 0;
    int neg = 0, digits = 0;

    skip_spaces(p);
    if ((*p)[0] == '0' && ((*p)[1] == 'x' || (*p)[1] == 'X')) {
        unsigned long u;
        if (!parse_hex(p, &u))
            return 0;
        *out = (long)u;
        return 1;
    }
    if (**p == '-') {
        neg = 1;
        (*p)++;
    }
    while (**p >= '0' && **p <= '9') {
        v = v * 10 + (**p - '0');
        (*p)++;
        digits++;
    }
    *out = neg ? -v : v;
    return digits > 0;
}

/* hex pairs up to the next space or the end; returns count or -1 */
static int parse_bytes(const char **p, uint8_t *out)
{
    int n = 0;

    skip_spaces(p);
    while (**p && **p != ' ') {
        int hi = hex_value((*p)[0]);
        int lo = hi < 0 ? -1 : hex_value((*p)[1]);
        if (lo < 0)
            return -1;                  /* odd length or not hex        */
        out[n++] = (uint8_t)(hi << 4 | lo);
        *p += 2;
    }
    return n;
}

/* nothing but spaces may follow */
static int at_end(const char **p)
{
    skip_spaces(p);
    return **p == '\0';
}

/* ---- output helpers ---------------------------------------------- */

static void put_bytes_hex(const volatile uint8_t *b, unsigned long n)
{
    unsigned long i;

    for (i = 0; i < n; i++)
        put_hex_width(b[i], 2);
}

static void answer(long v)
{
    put_dec(v);
    putchar_e9('\n');
}

/* ---- one command --------------------------------------------------- */

/* Returns 0 to go on, 1 for "q". */
static int run_command(void)
{
    const char *p = line + 1;
    char cmd = line[0];
    long a, b;
    unsigned long addr, u;
    int n, i;

    if (line[1] != ' ' && line[1] != '\0')
        goto bad;                       /* e.g. "open": not a command   */

    switch (cmd) {
    case 'q':
        if (!at_end(&p))
            goto bad;
        return 1;

    case 'o':                           /* o <flags> <name>             */
        if (!parse_dec(&p, &a))
            goto bad;
        if (*p == ' ')
            p++;                        /* one space, then the name     */
        else if (*p != '\0')
            goto bad;
        answer(f_open(p, (int)a));
        return 0;

    case 'c':                           /* c <vfd>                      */
        if (!parse_dec(&p, &a) || !at_end(&p))
            goto bad;
        answer(f_close((int)a));
        return 0;

    case 'w':                           /* w <vfd> <hexbytes>           */
        if (!parse_dec(&p, &a) || (n = parse_bytes(&p, bytes)) < 0 ||
            !at_end(&p))
            goto bad;
        answer(f_write_request((int)a, bytes, n));
        return 0;

    case 'r':                           /* r <vfd> <count>              */
        if (!parse_dec(&p, &a) || !parse_dec(&p, &b) || !at_end(&p))
            goto bad;
        if (b < -0x80000000L || b > 0x7FFFFFFFL)
            b = -1;                     /* refused locally, no request  */
        n = f_read_request((int)a, rbuf, (int)b);
        put_dec(n);
        putchar_e9(' ');
        if (n > 0)
            put_bytes_hex(rbuf, n);
        putchar_e9('\n');
        return 0;

    case 'x':                           /* x <hexbytes>: raw outb       */
        if ((n = parse_bytes(&p, bytes)) < 0 || !at_end(&p))
            goto bad;
        for (i = 0; i < n; i++)
            outb(FILE_PORT, bytes[i]);
        puts_e9("ok\n");
        return 0;

    case 'i':                           /* i <k>: raw inb, k times      */
        if (!parse_dec(&p, &a) || a < 0 || !at_end(&p))
            goto bad;
        for (b = 0; b < a; b++)
            put_hex_width(inb(FILE_PORT), 2);
        putchar_e9('\n');
        return 0;

    case 'I':                           /* I: raw inl                   */
        if (!at_end(&p))
            goto bad;
        put_hex_width(inl(FILE_PORT), 8);
        putchar_e9('\n');
        return 0;

    case 'L':                           /* L <hexdword>: raw outl       */
        if (!parse_hex(&p, &u) || !at_end(&p))
            goto bad;
        outl(FILE_PORT, (uint32_t)u);
        puts_e9("ok\n");
        return 0;

    case 'B': {                         /* B r|w <vfd> <addr> <len>     */
        char dir;
        long r;

        skip_spaces(&p);
        dir = *p;
        if ((dir != 'r' && dir != 'w') || p[1] != ' ')
            goto bad;
        p++;
        if (!parse_dec(&p, &a) || !parse_hex(&p, &addr) ||
            !parse_dec(&p, &b) || !at_end(&p))
            goto bad;
        if (dir == 'r')
            r = f_read_bulk((int)a, (void *)(uintptr_t)(uint32_t)addr,
                            (unsigned)b);
        else
            r = f_write_bulk((int)a, (const void *)(uintptr_t)(uint32_t)addr,
                             (unsigned)b);
        answer(r);
        return 0;
    }

    case 'm':                           /* m <addr> <hexbytes>          */
        if (!parse_hex(&p, &addr) || (n = parse_bytes(&p, bytes)) < 0 ||
            !at_end(&p))
            goto bad;
        for (i = 0; i < n; i++)
            ((volatile uint8_t *)addr)[i] = bytes[i];
        puts_e9("ok\n");
        return 0;

    case 'd':                           /* d <addr> <len>               */
        if (!parse_hex(&p, &addr) || !parse_dec(&p, &a) || a < 0 ||
            !at_end(&p))
            goto bad;
        put_bytes_hex((const volatile uint8_t *)addr, (unsigned long)a);
        putchar_e9('\n');
        return 0;
    }

bad:
    puts_e9("?\n");
    return 0;
}

void guest_main(void)
{
    int eof = 0;

    while (!eof) {
        int n = read_line(&eof);

        if (n == -1)                    /* end of stdin, nothing read   */
            break;
        if (n == -2) {                  /* line too long                */
            puts_e9("?\n");
            continue;
        }
        if (n == 0)                     /* empty line: no output        */
            continue;
        if (run_command())              /* "q"                          */
            break;
    }
}
