# check-sse.awk: the SSE part of `make check` for a Rust image (see ../Makefile, check).
#
# Input: `objdump -d --demangle NAME.elf`. Run as: awk -v img=NAME.img -f rust/check-sse.awk
#
# guest.ld puts the code that a Rust guest's archive carries precompiled from the Rust
# toolchain (core, compiler_builtins: not compiled with the guest's flags) in the section
# .text.precompiled. An SSE/MMX register or SSE state instruction there is a WARNING, listed
# by function: it runs only if the guest calls that function. Anywhere else (_start, the
# guest, the hv library, and core compiled again with the guest's flags through LTO) it is a
# failure: each such line is printed, and the exit status is 1.

/^Disassembly of section / {
    section = $4
    sub(/:$/, "", section)
}

# A function's first line: "0000000000000010 <rs_hello::fib>:"
/^[0-9a-f]+ <.*>:$/ {
    fn = $0
    sub(/^[0-9a-f]+ </, "", fn)
    sub(/>:$/, "", fn)
}

# The same pattern as the C images' check (mawk has no \b: a register name ends at a non-digit)
/%([xyz]mm[0-9]+|mm[0-7])([^0-9]|$)|mxcsr|fxsave|fxrstor|xsave|xrstor/ {
    if (section == ".text.precompiled") {
        if (!(fn in count))
            order[++functions] = fn
        count[fn]++
    } else {
        print "check: " img " contains SSE/MMX code in " fn ":" $0
        own = 1
    }
}

END {
    if (functions > 0) {
        print "check: WARNING: " img ": SSE in code precompiled in the Rust toolchain, which runs only if the guest calls it:"
        for (i = 1; i <= functions; i++)
            print "check:   " order[i] " (" count[order[i]] " instructions)"
    }
    exit own
}
