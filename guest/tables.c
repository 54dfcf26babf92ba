/* tables.c -> tables.img (version A): a stray write into the page tables.
 * The hypervisor builds the guest's page tables at the top of RAM, and CR3
 * holds the address of the PML4.  This guest plays a pointer bug that lands
 * there: it follows CR3 down to the entry that maps its own code, page 0 (the
 * first entry of the first page table with -p 4, the first page-directory
 * entry with -p 2), clears it, and reloads CR3, which flushes the TLB (a
 * stale TLB entry could otherwise hide the change for a while).  The next
 * instruction fetch page-faults; there is no interrupt table, so the guest
 * ends in a triple fault, and the crash report says first that the guest
 * overwrote the page tables the hypervisor built, naming the table and the
 * entry, instead of guessing that the guest jumped somewhere. */
#include "hv.h"

#define PTE_ADDR  0x000ffffffffff000UL  /* bits 51..12: the next table or page */
#define PTE_LARGE (1UL << 7)            /* PS: a PD entry that maps a 2 MiB page */

static uint64_t *table_of(uint64_t entry)
{
    return (uint64_t *)(entry & PTE_ADDR);
}

/* noinline: the crash report names this function, not its caller. */
static void __attribute__((noinline)) clear_code_mapping(void)
{
    uint64_t *pml4 = table_of(read_cr3());
    uint64_t *pdpt = table_of(pml4[0]);
    uint64_t *pd = table_of(pdpt[0]);
    volatile uint64_t *entry = (pd[0] & PTE_LARGE) ? &pd[0] : &table_of(pd[0])[0];

    *entry = 0;                                     /* the stray write */
    asm volatile("mov %%cr3, %%rax\n\t"
                 "mov %%rax, %%cr3"                 /* flush the TLB */
                 : : : "rax", "memory");
}

void guest_main(void)
{
    puts_e9("clearing the page-table entry of my own code\n");
    clear_code_mapping();
    puts_e9("not reached\n");
}
