//! rs_hello.rs -> rs_hello.img (every version): the first Rust guest.
//!
//! Output: `Hello from Rust!\nfib(20) = 6765\n`, then it halts (exit status 0).
#![no_std]
#![no_main]

hv::entry!(main);

/// The n-th Fibonacci number, the slow way: many calls, so gdb has a function to break on.
fn fib(n: u32) -> u64 {
    if n < 2 { u64::from(n) } else { fib(n - 1) + fib(n - 2) }
}

fn main() {
    hv::putln!("Hello from Rust!");
    let n = 20;
    let result = fib(n);
    hv::putln!("fib(", n, ") = ", result);
}
