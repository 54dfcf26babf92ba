/*
 * paging.c -> paging.img (version A): look at our own page tables.
 *
 * Reads CR3 and the entry RSP (saved by _start in hv_entry_rsp before
 * anything was pushed), walks the 4-level tables PML4 -> PDPT -> PD -> PT
 * and prints one line:
 *
 *   paging: mem=<MiB> page=<4K|2M> cr3=0x<hex> rsp=0x<hex> tables=<n>
 *           identity=<ok|BAD> above=<unmapped|MAPPED>        (one line)
 *
 *   mem      size of the contiguous identity-mapped region starting at 0
 *   page     2M if the first present PD entry has the PS bit, else 4K
 *   tables   number of distinct 4 KiB table pages reached from CR3
 *   identity ok iff every mapped page has virtual address == physical
 *   above    unmapped iff only PML4[0] and PDPT[0] are present and nothing
 *            (no PD entry, no page) is mapped at or above mem
 *
 * Nothing is assumed about the layout: everything is measured.
 */
#include "hv.h"

#define PTE_P     0x001UL                   /* present                   */
#define PTE_PS    0x080UL                   /* page size (leaf in PDPT/PD) */
#define PTE_ADDR  0x000FFFFFFFFFF000UL      /* physical address bits     */
#define MAX_RAM   (8UL << 20)               /* we never follow pointers above this */
#define MAX_TABLES 64

static uint64_t seen[MAX_TABLES];           /* distinct table pages       */
static int n_tables;
static int identity_ok = 1;
static int above_mapped;
static uint64_t run_end;                    /* end of identity run from 0 */
static int run_open = 1;                    /* still extending the run?   */
static uint64_t highest_pd_va;              /* highest present PD entry   */
static int any_pd;
static const char *page_kind = "?";

/* Count a table page once; return its entries, or 0 if unusable. */
static uint64_t *table_at(uint64_t entry)
{
    uint64_t addr = entry & PTE_ADDR;
    int i;

    if (addr >= MAX_RAM) {                  /* would fault if we read it  */
        identity_ok = 0;
        return 0;
    }
    for (i = 0; i < n_tables; i++)
        if (seen[i] == addr)
            break;
    if (i == n_tables && n_tables < MAX_TABLES)
        seen[n_tables++] = addr;
    return (uint64_t *)addr;
}

/* One mapped page of 'size' bytes at virtual va -> physical pa.
 * Pages are visited in increasing va order. */
static void leaf(uint64_t va, uint64_t pa, uint64_t size)
{
    if (va != pa)
        identity_ok = 0;
    if (run_open && va == run_end && pa == va)
        run_end += size;                    /* extends [0, run_end)       */
    else {
        run_open = 0;                       /* run is over: this page is  */
        above_mapped = 1;                   /* mapped at or above mem     */
    }
}

static void walk_pt(uint64_t entry, uint64_t va)
{
    uint64_t *pt = table_at(entry);
    int l;

    if (!pt)
        return;
    for (l = 0; l < 512; l++)
        if (pt[l] & PTE_P)
            leaf(va + ((uint64_t)l << 12), pt[l] & PTE_ADDR, 1UL << 12);
}

static void walk_pd(uint64_t entry, uint64_t va)
{
    uint64_t *pd = table_at(entry);
    int k;

    if (!pd)
        return;
    for (k = 0; k < 512; k++) {
        uint64_t e = pd[k];
        uint64_t kva = va + ((uint64_t)k << 21);

        if (!(e & PTE_P))
            continue;
        if (!any_pd)                        /* first present PD entry     */
            page_kind = (e & PTE_PS) ? "2M" : "4K";
        any_pd = 1;
        highest_pd_va = kva;
        if (e & PTE_PS)
            leaf(kva, e & PTE_ADDR & ~0x1FFFFFUL, 1UL << 21);  /* 2 MiB page */
        else
            walk_pt(e, kva);
    }
}

static void walk_pdpt(uint64_t entry, uint64_t va)
{
    uint64_t *pdpt = table_at(entry);
    int j;

    if (!pdpt)
        return;
    for (j = 0; j < 512; j++) {
        uint64_t e = pdpt[j];
        uint64_t jva = va + ((uint64_t)j << 30);

        if (!(e & PTE_P))
            continue;
        if (jva != 0)
            above_mapped = 1;               /* only PDPT[0] of PML4[0]    */
        if (e & PTE_PS)
            leaf(jva, e & PTE_ADDR & ~0x3FFFFFFFUL, 1UL << 30); /* 1 GiB page */
        else
            walk_pd(e, jva);
    }
}

void guest_main(void)
{
    uint64_t cr3 = read_cr3();
    uint64_t rsp = hv_entry_rsp;            /* RSP at entry, see hv.c     */
    uint64_t *pml4;
    int i;

    pml4 = table_at(cr3);
    if (pml4) {
        for (i = 0; i < 512; i++) {
            uint64_t va = (uint64_t)i << 39;

            if (!(pml4[i] & PTE_P))
                continue;
            if (i != 0)
                above_mapped = 1;           /* only PML4[0]               */
            if (i >= 256)                   /* upper half: sign-extended  */
                va |= 0xFFFF000000000000UL;
            walk_pdpt(pml4[i], va);
        }
    }
    if (any_pd && highest_pd_va >= run_end)
        above_mapped = 1;                   /* a PD entry at/above mem    */

    puts_e9("paging: mem=");
    put_udec(run_end >> 20);
    puts_e9(" page=");
    puts_e9(page_kind);
    puts_e9(" cr3=0x");
    put_hex(cr3);
    puts_e9(" rsp=0x");
    put_hex(rsp);
    puts_e9(" tables=");
    put_dec(n_tables);
    puts_e9(identity_ok ? " identity=ok" : " identity=BAD");
    puts_e9(above_mapped ? " above=MAPPED\n" : " above=unmapped\n");
}
