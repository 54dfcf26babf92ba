/*
 * hv.c - the tiny guest library: _start, serial console, file protocol,
 * memcpy/memset/strlen.  See hv.h for the interface.
 *
 * Compiled with -mgeneral-regs-only: the KVM on the development machines
 * emulates guest instructions and has no SSE, so no xmm register may appear
 * anywhere (checked by "make check").
 */
#include "hv.h"

/* ------------------------------------------------------------------ */
/* _start: the first byte of every image (section .start, see guest.ld) */
/* ------------------------------------------------------------------ */

/* RSP as set by the hypervisor (just below the page tables). */
uint64_t hv_entry_rsp;

/*
 * Written in assembly so that RSP is saved before anything is pushed.
 * At entry RSP is page aligned, so after "call" guest_main sees the
 * usual ABI alignment (RSP + 8 is a multiple of 16).
 */
asm(
    ".section .start, \"ax\", @progbits\n" /* put _start in section .start    */
    ".globl _start\n"                      /* visible to the linker script    */
    "_start:\n"
    "    mov %rsp, hv_entry_rsp(%rip)\n"   /* remember entry RSP (no push yet) */
    "    cld\n"                            /* string ops go upwards (ABI)     */
    "    call guest_main\n"                /* run the guest program           */
    "1:  hlt\n"                            /* stop the VM ...                 */
    "    jmp 1b\n"                         /* ... and never run past it       */
    ".previous\n"                          /* back to the previous section    */
);

/* ------------------------------------------------------------------ */
/* Serial port 0xE9                                                    */
/* ------------------------------------------------------------------ */

void putchar_e9(char c)
{
    outb(SERIAL_PORT, (uint8_t)c);
}

void puts_e9(const char *s)
{
    while (*s)
        putchar_e9(*s++);
}

void put_udec(unsigned long value)
{
    char digits[20];            /* 2^64 has 20 decimal digits */
    int n = 0;

    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0)
        putchar_e9(digits[--n]);
}

void put_dec(long value)
{
    if (value < 0) {
        putchar_e9('-');
        /* negate as unsigned so that the most negative value works too */
        put_udec(-(unsigned long)value);
    } else {
        put_udec((unsigned long)value);
    }
}

static const char hex_digits[] = "0123456789abcdef";

void put_hex(unsigned long value)
{
    int shift = 60;

    /* skip leading zero digits, but always print at least one digit */
    while (shift > 0 && ((value >> shift) & 0xF) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        putchar_e9(hex_digits[(value >> shift) & 0xF]);
}

void put_hex_width(unsigned long value, int digits)
{
    int shift;

    for (shift = (digits - 1) * 4; shift >= 0; shift -= 4)
        putchar_e9(hex_digits[(value >> shift) & 0xF]);
}

int getchar_e9(void)
{
    uint8_t c = inb(SERIAL_PORT);

    return c == 0xFF ? -1 : c;
}

void serial_read(void *buf, unsigned n)
{
    unsigned long count = n;

    asm volatile("rep insb"             /* n times: *rdi++ = in(dx)    */
                 : "+D"(buf), "+c"(count)
                 : "d"((uint16_t)SERIAL_PORT)
                 : "memory");
}

void serial_write(const void *buf, unsigned n)
{
    unsigned long count = n;

    asm volatile("rep outsb"            /* n times: out(dx, *rsi++)    */
                 : "+S"(buf), "+c"(count)
                 : "d"((uint16_t)SERIAL_PORT)
                 : "memory");
}

/* ------------------------------------------------------------------ */
/* File protocol on port 0x0278 (docs/REFERENCE.md §5): byte per in/out */
/* ------------------------------------------------------------------ */

/* The answer byte is signed: 0xFF means -1. */
static int answer_byte(void)
{
    return (signed char)inb(FILE_PORT);
}

int f_open(const char *name, int flags)
{
    size_t len = strlen(name);
    size_t i;

    if (len > 254)                      /* cannot be sent in one length byte */
        return -1;
    outb(FILE_PORT, CMD_OPEN);
    outb(FILE_PORT, (uint8_t)flags);
    outb(FILE_PORT, (uint8_t)len);
    for (i = 0; i < len; i++)
        outb(FILE_PORT, (uint8_t)name[i]);
    return answer_byte();               /* vfd or -1 */
}

int f_close(int vfd)
{
    outb(FILE_PORT, CMD_CLOSE);
    outb(FILE_PORT, (uint8_t)vfd);
    return answer_byte();               /* 0 or -1 */
}

int f_read_request(int vfd, void *buf, int count)
{
    uint8_t *p = buf;
    int n, i;

    if (count < 0 || count > 255)
        return -1;
    outb(FILE_PORT, CMD_READ);
    outb(FILE_PORT, (uint8_t)vfd);
    outb(FILE_PORT, (uint8_t)count);
    n = answer_byte();                  /* bytes that follow, 0 = EOF, -1 */
    if (n <= 0)
        return n;
    /* Read all n bytes (one in each) to stay in sync with the hypervisor,
     * but never store more than count bytes into buf. */
    for (i = 0; i < n; i++) {
        uint8_t b = inb(FILE_PORT);
        if (i < count)
            p[i] = b;
    }
    return n < count ? n : count;
}

int f_write_request(int vfd, const void *buf, int count)
{
    const uint8_t *p = buf;
    int i;

    if (count < 0 || count > 255)
        return -1;
    outb(FILE_PORT, CMD_WRITE);
    outb(FILE_PORT, (uint8_t)vfd);
    outb(FILE_PORT, (uint8_t)count);
    for (i = 0; i < count; i++)
        outb(FILE_PORT, p[i]);
    return answer_byte();               /* bytes written or -1 */
}

/* f_read/f_write: any count, split into requests of at most
 * FILE_CHUNK_MAX bytes (the hypervisor answers at most 127 per request). */

int f_read(int vfd, void *buf, int count)
{
    uint8_t *p = buf;
    int total = 0;

    if (count < 0)
        return -1;
    if (count == 0)                     /* still one request: checks vfd */
        return f_read_request(vfd, buf, 0);
    while (total < count) {
        int want = count - total > FILE_CHUNK_MAX ? FILE_CHUNK_MAX : count - total;
        int n = f_read_request(vfd, p + total, want);
        if (n < 0)                      /* error: what was read so far */
            return total > 0 ? total : -1;
        total += n;
        if (n < want)                   /* end of file reached */
            break;
    }
    return total;
}

int f_write(int vfd, const void *buf, int count)
{
    const uint8_t *p = buf;
    int total = 0;

    if (count < 0)
        return -1;
    if (count == 0)                     /* still one request: checks vfd */
        return f_write_request(vfd, buf, 0);
    while (total < count) {
        int want = count - total > FILE_CHUNK_MAX ? FILE_CHUNK_MAX : count - total;
        int n = f_write_request(vfd, p + total, want);
        if (n < 0)                      /* error: what was written so far */
            return total > 0 ? total : -1;
        total += n;
        if (n < want)                   /* short write: stop there */
            break;
    }
    return total;
}

long cat_file(const char *name)
{
    char buf[127];
    long total = 0;
    int vfd = f_open(name, O_READ);

    if (vfd < 0) {
        puts_e9("cannot open ");
        puts_e9(name);
        putchar_e9('\n');
        return -1;
    }
    for (;;) {
        int n = f_read(vfd, buf, sizeof(buf));
        if (n < 0) {
            puts_e9("read error\n");
            total = -1;
            break;
        }
        if (n == 0)                     /* end of file */
            break;
        serial_write(buf, n);
        total += n;
    }
    f_close(vfd);
    return total;
}

/* ------------------------------------------------------------------ */
/* Bulk transfers (docs/REFERENCE.md §6): bytes for command and vfd, */
/* dwords for address and length and for the answer.                   */
/* ------------------------------------------------------------------ */

static long bulk(uint8_t cmd, int vfd, const void *buf, unsigned len)
{
    uint32_t result;

    outb(FILE_PORT, cmd);
    outb(FILE_PORT, (uint8_t)vfd);
    outl(FILE_PORT, (uint32_t)(uintptr_t)buf);  /* RAM is identity mapped */
    outl(FILE_PORT, len);
    result = inl(FILE_PORT);
    return result == 0xFFFFFFFFu ? -1 : (long)result;
}

long f_read_bulk(int vfd, void *buf, unsigned len)
{
    return bulk(CMD_READ_BULK, vfd, buf, len);
}

long f_write_bulk(int vfd, const void *buf, unsigned len)
{
    return bulk(CMD_WRITE_BULK, vfd, buf, len);
}

/* ------------------------------------------------------------------ */
/* String functions.  memcpy/memset use rep movsb/stosb, so gcc cannot */
/* turn their loops back into calls to themselves.                     */
/* ------------------------------------------------------------------ */

void *memcpy(void *dst, const void *src, size_t n)
{
    void *ret = dst;

    asm volatile("rep movsb"            /* n times: *rdi++ = *rsi++    */
                 : "+D"(dst), "+S"(src), "+c"(n)
                 :
                 : "memory");
    return ret;
}

void *memset(void *dst, int c, size_t n)
{
    void *ret = dst;

    asm volatile("rep stosb"            /* n times: *rdi++ = al        */
                 : "+D"(dst), "+c"(n)
                 : "a"(c)
                 : "memory");
    return ret;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] != q[i])
            return p[i] < q[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n])
        n++;
    return n;
}

long copy_file(const char *from, const char *to, void *bulk_buf, unsigned bulk_size)
{
    char buf[127];
    long total = 0;
    int in = f_open(from, O_READ);
    int out;

    if (in < 0) {
        puts_e9("cannot open ");
        puts_e9(from);
        putchar_e9('\n');
        return -1;
    }
    out = f_open(to, O_WRITE);
    if (out < 0) {
        puts_e9("cannot create ");
        puts_e9(to);
        putchar_e9('\n');
        f_close(in);
        return -1;
    }
    for (;;) {
        long n = bulk_buf ? f_read_bulk(in, bulk_buf, bulk_size)
                          : f_read(in, buf, sizeof(buf));
        if (n < 0) {
            puts_e9(bulk_buf ? "bulk read error\n" : "read error\n");
            total = -1;
            break;
        }
        if (n == 0)                     /* end of file */
            break;
        if ((bulk_buf ? f_write_bulk(out, bulk_buf, (unsigned)n)
                      : f_write(out, buf, (int)n)) != n) {
            puts_e9(bulk_buf ? "bulk write error\n" : "write error\n");
            total = -1;
            break;
        }
        total += n;
    }
    f_close(in);
    f_close(out);
    return total;
}
