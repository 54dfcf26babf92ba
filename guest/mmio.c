/*
 * mmio.c -> mmio.img (version A): touch memory that is not RAM.
 *
 * Guest-physical 0x40000000 (1 GiB) is outside RAM for every M, so KVM has
 * no memory slot there and reports the write as KVM_EXIT_MMIO; the
 * hypervisor stops the VM with a diagnostic.
 *
 * First the address must be mapped, otherwise the write would page-fault
 * (and, with no IDT, triple-fault).  We extend our own page tables:
 *   PDPT[1] (virtual 1 GiB .. 2 GiB) -> our own page directory new_pd,
 *   new_pd[0] -> a 2 MiB page (PS bit) at physical 0x40000000.
 * This works for every M and both page sizes: PDPT[1] is never used by the
 * hypervisor's identity map (RAM is at most 8 MiB), and 2 MiB pages always
 * exist in long mode (1 GiB pages would need a CPUID feature).
 */
#include "hv.h"

#define PTE_P     0x001UL               /* present              */
#define PTE_RW    0x002UL               /* writable             */
#define PTE_PS    0x080UL               /* 2 MiB page in a PD   */
#define PTE_ADDR  0x000FFFFFFFFFF000UL  /* physical address bits */
#define MMIO_ADDR 0x40000000UL          /* 1 GiB                */

/* A page directory must be 4 KiB aligned.  It lives in .bss, which is part
 * of the loaded image (see guest.ld), so it is identity mapped RAM. */
static uint64_t new_pd[512] __attribute__((aligned(4096)));

void guest_main(void)
{
    uint64_t *pml4 = (uint64_t *)(read_cr3() & PTE_ADDR);
    uint64_t *pdpt = (uint64_t *)(pml4[0] & PTE_ADDR);

    puts_e9("touching mmio\n");

    new_pd[0] = MMIO_ADDR | PTE_PS | PTE_RW | PTE_P;
    pdpt[1] = (uint64_t)(uintptr_t)new_pd | PTE_RW | PTE_P;
    asm volatile("invlpg (%0)"          /* drop any stale TLB entry for it */
                 : : "r"(MMIO_ADDR) : "memory");

    *(volatile uint8_t *)MMIO_ADDR = 0x42;  /* -> KVM_EXIT_MMIO          */

    /* Only a hypervisor that ignores the MMIO exit gets here. */
    puts_e9("mmio write returned\n");
}
