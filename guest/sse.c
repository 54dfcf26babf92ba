/* sse.c -> sse.img (version A): does the hypervisor enable SSE?
 * Only reads CR0 and CR4 (running a real SSE instruction would kill the
 * guest on hosts whose KVM emulates instructions without SSE support). */
#include "hv.h"

#define CR0_MP          (1UL << 1)   /* monitor coprocessor           */
#define CR0_EM          (1UL << 2)   /* emulate FPU: must be 0 for SSE */
#define CR4_OSFXSR      (1UL << 9)   /* OS supports fxsave / SSE      */
#define CR4_OSXMMEXCPT  (1UL << 10)  /* OS handles SIMD exceptions    */

static void bit(const char *label, uint64_t reg, uint64_t mask)
{
    puts_e9(label);
    putchar_e9((reg & mask) ? '1' : '0');
}

void guest_main(void)
{
    uint64_t cr0 = read_cr0();
    uint64_t cr4 = read_cr4();
    int enabled = !(cr0 & CR0_EM) && (cr0 & CR0_MP) &&
                  (cr4 & CR4_OSFXSR) && (cr4 & CR4_OSXMMEXCPT);

    bit("sse: cr0.em=", cr0, CR0_EM);
    bit(" cr0.mp=", cr0, CR0_MP);
    bit(" cr4.osfxsr=", cr4, CR4_OSFXSR);
    bit(" cr4.osxmmexcpt=", cr4, CR4_OSXMMEXCPT);
    puts_e9(enabled ? " => enabled\n" : " => disabled\n");
}
