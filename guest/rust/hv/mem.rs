//! The functions that the compiler and `core` call by name, which a libc would give:
//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` (a copy of a big value, a slice compared
//! or filled), and `rust_eh_personality`; and `hv_fail`, the panic handler's way out.
//!
//! They are written in assembly, a few instructions each (`rep movsb`, `rep stosb`,
//! `repe cmpsb`: no SSE, and nothing the compiler could turn back into a call to the function
//! itself), each in a section of its own, so that `ld --gc-sections` drops the ones a guest
//! does not use. Assembly has one more merit here: it has no debug information. The linker
//! drops a function's code but not its debug information, which it leaves at address 0, where
//! gdb would then see it instead of `_start` ("0x0 in memcpy ()").
//!
//! The System V x86-64 calling convention: arguments in rdi, rsi, rdx; the result in rax (eax);
//! rcx, r8 and the flags are the callee's to change; DF is clear at every call and return.

core::arch::global_asm!(
    // void *memcpy(void *dst, const void *src, size_t n): n bytes, the ranges do not overlap.
    ".pushsection .text.memcpy, \"ax\", @progbits",
    ".globl memcpy",
    ".type memcpy, @function",
    "memcpy:",
    "    mov %rdi, %rax", // returns dst
    "    mov %rdx, %rcx",
    "    rep movsb", // rcx times: *rdi++ = *rsi++
    "    ret",
    ".size memcpy, . - memcpy",
    ".popsection",
    //
    // void *memmove(void *dst, const void *src, size_t n): the ranges may overlap.
    ".pushsection .text.memmove, \"ax\", @progbits",
    ".globl memmove",
    ".type memmove, @function",
    "memmove:",
    "    mov %rdi, %rax", // returns dst
    "    mov %rdx, %rcx",
    "    mov %rdi, %r8",
    "    sub %rsi, %r8", // r8 = dst - src, unsigned: below n only if dst is in [src, src + n)
    "    cmp %rdx, %r8",
    "    jae 1f", // not: dst below src, or no overlap, so copying upwards (1:) is right
    // dst inside (src, src + n): upwards would overwrite bytes not yet read; so downwards,
    // from the last byte of each range
    "    lea -1(%rdi,%rdx), %rdi",
    "    lea -1(%rsi,%rdx), %rsi",
    "    std", // DF set: rep movsb goes downwards ...
    "    rep movsb",
    "    cld", // ... and clear again at once
    "    ret",
    "1:  rep movsb",
    "    ret",
    ".size memmove, . - memmove",
    ".popsection",
    //
    // void *memset(void *dst, int c, size_t n): n bytes of (unsigned char)c.
    ".pushsection .text.memset, \"ax\", @progbits",
    ".globl memset",
    ".type memset, @function",
    "memset:",
    "    mov %rdi, %r8",  // dst, to return
    "    mov %esi, %eax", // the byte, in al
    "    mov %rdx, %rcx",
    "    rep stosb", // rcx times: *rdi++ = al
    "    mov %r8, %rax",
    "    ret",
    ".size memset, . - memset",
    ".popsection",
    //
    // int memcmp(const void *a, const void *b, size_t n): a[i] - b[i] (as unsigned bytes) at
    // the first i where they differ, 0 if none does. bcmp, which only says whether they differ
    // (0: equal), is the same code.
    ".pushsection .text.memcmp, \"ax\", @progbits",
    ".globl memcmp",
    ".type memcmp, @function",
    ".globl bcmp",
    ".type bcmp, @function",
    "memcmp:",
    "bcmp:",
    "    xor %eax, %eax", // 0: equal
    "    mov %rdx, %rcx",
    "    test %rcx, %rcx", // n = 0: equal (repe cmpsb would not even set the flags)
    "    jz 1f",
    "    repe cmpsb",            // compare *rsi++ with *rdi++ while equal, at most rcx times
    "    je 1f",                 // the last compare was equal: all n were
    "    movzbl -1(%rdi), %eax", // the first differing bytes, just behind rdi and rsi
    "    movzbl -1(%rsi), %ecx",
    "    sub %ecx, %eax",
    "1:  ret",
    ".size memcmp, . - memcmp",
    ".size bcmp, . - bcmp",
    ".popsection",
    //
    // rust_eh_personality: the personality routine of unwinding, which core's precompiled
    // unwinding tables name. We never unwind (panic=abort); with LTO nothing refers to it and
    // the linker drops it, but a build without LTO needs the name to link. Never called.
    ".pushsection .text.rust_eh_personality, \"ax\", @progbits",
    ".globl rust_eh_personality",
    ".type rust_eh_personality, @function",
    "rust_eh_personality:",
    "    ud2",
    ".size rust_eh_personality, . - rust_eh_personality",
    ".popsection",
    //
    // hv_fail: ends the VM as a failure (see crate::fail). An empty interrupt table, then ud2:
    // the invalid-opcode exception cannot be delivered, nor the double fault that follows, so
    // the CPU triple-faults and the hypervisor reports it, with RIP on this ud2.
    ".pushsection .text.hv_fail, \"ax\", @progbits",
    ".globl hv_fail",
    ".type hv_fail, @function",
    "hv_fail:",
    "    push %rbp", // a frame as rustc makes them: the crash report's backtrace follows it
    "    mov %rsp, %rbp",
    "    push $0", // 16 zero bytes on the stack: lidt's operand, limit 0 and base 0
    "    push $0",
    "    lidt (%rsp)", // the empty interrupt table (works even after a guest's own lidt)
    "    ud2",         // #UD -> #DF -> triple fault: the VM ends here
    ".size hv_fail, . - hv_fail",
    ".popsection",
    options(att_syntax)
);
