/*
 * hv.h - the tiny guest library for the mini hypervisor.
 *
 * A guest is a bare-metal 64-bit C program with no libc.  It runs in long
 * mode, with interrupts off, on identity-mapped RAM [0, M), and talks to the
 * hypervisor only through I/O ports:
 *
 *   0xE9    serial: one-byte out = one byte of stdout,
 *                   one-byte in  = next byte of stdin (0xFF at end of file)
 *   0x0278  file protocol (version C): see f_open() and friends below and
 *           docs/REFERENCE.md sections 5 (byte protocol) and 6 (bulk).
 *
 * Every guest defines
 *
 *     void guest_main(void);
 *
 * The library's _start (hv.c) saves the entry RSP in hv_entry_rsp, calls
 * guest_main() and then executes hlt forever, which ends the VM.
 */
#ifndef HV_H
#define HV_H

typedef unsigned char      uint8_t;
typedef unsigned short     uint16_t;
typedef unsigned int       uint32_t;
typedef unsigned long      uint64_t;
typedef unsigned long      uintptr_t;
typedef unsigned long      size_t;

#define SERIAL_PORT 0xE9     /* serial console            */
#define FILE_PORT   0x0278   /* file protocol (version C) */

/* File protocol command bytes (docs/REFERENCE.md sections 5 and 6). */
#define CMD_OPEN       0x01
#define CMD_CLOSE      0x02
#define CMD_READ       0x03
#define CMD_WRITE      0x04
#define CMD_READ_BULK  0x05
#define CMD_WRITE_BULK 0x06

/* f_open() flags */
#define O_READ  0
#define O_WRITE 1

/* The most bytes one read or write request moves (the answer byte must
 * never be 0xFF, which means -1). */
#define FILE_CHUNK_MAX 127

/* ------------------------------------------------------------------ */
/* Port I/O.  Each function is exactly one in/out instruction.         */
/* "Nd" lets the compiler use an 8-bit immediate port or DX.           */
/* ------------------------------------------------------------------ */

static inline void outb(uint16_t port, uint8_t value)
{
    asm volatile("outb %0, %1"          /* write 1 byte AL to port     */
                 : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    asm volatile("inb %1, %0"           /* read 1 byte from port to AL */
                 : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

static inline void outw(uint16_t port, uint16_t value)
{
    asm volatile("outw %0, %1"          /* write 2 bytes AX to port    */
                 : : "a"(value), "Nd"(port) : "memory");
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t value;
    asm volatile("inw %1, %0"           /* read 2 bytes from port to AX */
                 : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

static inline void outl(uint16_t port, uint32_t value)
{
    asm volatile("outl %0, %1"          /* write 4 bytes EAX to port   */
                 : : "a"(value), "Nd"(port) : "memory");
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    asm volatile("inl %1, %0"           /* read 4 bytes from port to EAX */
                 : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

/* Stop the vCPU: the hypervisor sees KVM_EXIT_HLT and ends the VM. */
static inline void __attribute__((noreturn)) halt(void)
{
    for (;;)
        asm volatile("hlt");            /* halt; loop in case we ever resume */
}

/* ------------------------------------------------------------------ */
/* Entry state                                                         */
/* ------------------------------------------------------------------ */

/* RSP exactly as the hypervisor set it, saved by _start before any push. */
extern uint64_t hv_entry_rsp;

/* The guest's own main function (each guest program defines it). */
void guest_main(void);

/* ------------------------------------------------------------------ */
/* Serial port 0xE9                                                    */
/* ------------------------------------------------------------------ */

void putchar_e9(char c);                    /* one out                          */
void puts_e9(const char *s);                /* no newline added                 */
void put_dec(long value);                   /* signed decimal                   */
void put_udec(unsigned long value);         /* unsigned decimal                 */
void put_hex(unsigned long value);          /* lowercase hex, no 0x, no leading zeros */
void put_hex_width(unsigned long value, int digits); /* lowercase, zero-padded  */
int  getchar_e9(void);                      /* next stdin byte, -1 at EOF (0xFF) */
void serial_read(void *buf, unsigned n);    /* n bytes with ONE rep insb        */
void serial_write(const void *buf, unsigned n); /* n bytes with ONE rep outsb   */

/* ------------------------------------------------------------------ */
/* File I/O on port 0x0278 (version C)                                 */
/* All return -1 on error (answer byte 0xFF).                          */
/*                                                                     */
/* The course's guest library has the same four calls with C types of  */
/* the wire: uint8_t f_open(char *, uint8_t), int8_t f_close(int8_t),  */
/* int8_t f_read(int8_t, void *, uint8_t) and the same for f_write.    */
/* Here they take and return int, and f_read/f_write take any count.   */
/* ------------------------------------------------------------------ */

/* flags 0 = read, 1 = write (append, create).  Returns vfd or -1.
 * name length must be 0..254 (longer: -1 without talking to the port; an
 * empty name IS sent, so the hypervisor can refuse it). */
int f_open(const char *name, int flags);
/* Returns 0 or -1. */
int f_close(int vfd);
/* Reads up to count bytes (any count >= 0) into buf, with as many read
 * requests of at most FILE_CHUNK_MAX bytes as it takes.  Returns the
 * bytes read: count, or fewer at end of file (0 = already at end); -1 on
 * an error before any byte was read (after some bytes: those bytes).
 * count 0 sends one request of 0 bytes (0, or -1 for a bad vfd). */
int f_read(int vfd, void *buf, int count);
/* Writes count bytes (any count >= 0) with requests of at most
 * FILE_CHUNK_MAX bytes.  Returns count, or -1 if nothing could be
 * written (after some bytes: those bytes). */
int f_write(int vfd, const void *buf, int count);

/* Exactly ONE protocol request each, as on the wire (docs/REFERENCE.md
 * §5): count 0..255 (else -1 without a request).  The hypervisor answers
 * at most 127 bytes per read and refuses a write of more than 127 (-1).
 * f_read_request reads all n answer bytes but stores at most count. */
int f_read_request(int vfd, void *buf, int count);
int f_write_request(int vfd, const void *buf, int count);

/* Bulk transfers (docs/REFERENCE.md section 6): the hypervisor copies
 * directly between the file and guest RAM [buf, buf+len).  Return bytes
 * moved (0 = EOF for read) or -1. */
long f_read_bulk(int vfd, void *buf, unsigned len);
long f_write_bulk(int vfd, const void *buf, unsigned len);

/* Convenience: print a whole file to the serial port with f_read (127-byte
 * chunks).  Returns the number of bytes printed, or -1 (and prints
 * "cannot open <name>\n" or "read error\n") on error. */
long cat_file(const char *name);

/* Convenience: copy the file `from` into `to` (opened for write, so it is
 * created, or appended to).  With bulk_buf == 0 it uses f_read/f_write in
 * 127-byte chunks (one exit per byte); otherwise f_read_bulk/f_write_bulk
 * through bulk_buf, bulk_size bytes at a time (one exit per chunk).  Returns
 * the bytes copied, or -1 after printing "cannot open <from>\n",
 * "cannot create <to>\n", "[bulk ]read error\n" or "[bulk ]write error\n". */
long copy_file(const char *from, const char *to, void *bulk_buf, unsigned bulk_size);

/* ------------------------------------------------------------------ */
/* Tiny string library (gcc may also call memcpy/memset by itself)     */
/* ------------------------------------------------------------------ */

void  *memcpy(void *dst, const void *src, size_t n);
void  *memset(void *dst, int c, size_t n);
int    memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* ------------------------------------------------------------------ */
/* Control registers (read-only helpers)                               */
/* ------------------------------------------------------------------ */

static inline uint64_t read_cr0(void)
{
    uint64_t v;
    asm volatile("mov %%cr0, %0" : "=r"(v));  /* copy CR0 into a register */
    return v;
}

static inline uint64_t read_cr3(void)
{
    uint64_t v;
    asm volatile("mov %%cr3, %0" : "=r"(v));  /* copy CR3 into a register */
    return v;
}

static inline uint64_t read_cr4(void)
{
    uint64_t v;
    asm volatile("mov %%cr4, %0" : "=r"(v));  /* copy CR4 into a register */
    return v;
}

/* Fixed scratch area for big buffers (bulk copies, fileshell B/m/d).
 * 1 MiB is inside RAM for every M (2, 4, 8 MiB), above every image and far
 * below the page tables and the stack at the top of RAM.  Guests may use
 * [SCRATCH_BASE, SCRATCH_BASE + SCRATCH_SIZE). */
#define SCRATCH_BASE 0x100000UL
#define SCRATCH_SIZE 0x80000UL      /* 512 KiB */

#endif /* HV_H */
