/* ownidt.c -> ownidt.img (version A): a guest with its own interrupt table.
 * The hypervisor starts every guest with no interrupt table (IDTR limit 0),
 * so an exception ends in a triple fault.  This guest loads its own GDT
 * (the handler's code segment and the stack segment that iretq reloads)
 * and its own IDT with a handler for #UD (vector 6), then executes ud2:
 * the handler counts it, steps RIP past the 2-byte ud2 and returns with
 * iretq, and the guest goes on and halts normally, as on hardware. */
#include "hv.h"

/* One 16-byte interrupt gate of a 64-bit IDT. */
struct gate {
    uint16_t offset_low;
    uint16_t selector;                  /* code segment of the handler */
    uint8_t ist;                        /* 0: stay on the current stack */
    uint8_t type;                       /* 0x8e: present interrupt gate */
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
};

/* The operand of lgdt and lidt: limit (size - 1), then the base address. */
struct __attribute__((packed)) table_register {
    uint16_t limit;
    uint64_t base;
};

#define VECTOR_UD 6                     /* #UD, invalid opcode */
#define CODE_SELECTOR 0x08              /* GDT entry 1, as the hypervisor set CS */

/* Null descriptor, 64-bit code (L=1, present, execute/read), data (present,
 * read/write): the same selectors (0x08, 0x10) the guest already runs with. */
static const uint64_t gdt[3] = { 0, 0x00209a0000000000UL, 0x0000920000000000UL };
static struct gate idt[VECTOR_UD + 1];
volatile unsigned long ud_count;        /* incremented by the handler */

/* The #UD handler: the CPU pushed SS, RSP, RFLAGS, CS and RIP (no error
 * code for #UD); RIP is the ud2 itself, so skip its 2 bytes and return. */
void ud_handler(void);
asm(".text\n"
    "ud_handler:\n"
    "    incq ud_count(%rip)\n"
    "    addq $2, (%rsp)\n"             /* return past the ud2 */
    "    iretq\n");

static void set_gate(int vector, void (*handler)(void))
{
    uint64_t at = (uint64_t)handler;

    idt[vector].offset_low = (uint16_t)at;
    idt[vector].selector = CODE_SELECTOR;
    idt[vector].ist = 0;
    idt[vector].type = 0x8e;
    idt[vector].offset_mid = (uint16_t)(at >> 16);
    idt[vector].offset_high = (uint32_t)(at >> 32);
}

void guest_main(void)
{
    struct table_register gdtr = { sizeof(gdt) - 1, (uint64_t)gdt };
    struct table_register idtr = { sizeof(idt) - 1, (uint64_t)idt };

    set_gate(VECTOR_UD, ud_handler);
    asm volatile("lgdt %0" : : "m"(gdtr));
    asm volatile("lidt %0" : : "m"(idtr) : "memory");
    puts_e9("ownidt: ud2 with my own handler\n");
    asm volatile("ud2" : : : "memory");
    puts_e9("ownidt: handled ");
    put_udec(ud_count);
    puts_e9(" time, back after the ud2\n");
}
