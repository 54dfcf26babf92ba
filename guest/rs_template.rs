//! rs_template.rs -> rs_template.img (every version): the Rust guest to start from, as
//! template.c is for C (README.md quotes it; make test builds and runs it).
#![no_std]
#![no_main]

hv::entry!(main); // the library's _start, at address 0, calls main

fn square(x: u32) -> u32 {
    x * x
}

fn main() {
    hv::putln!("template: hello from the guest");
    for i in 1..=3 {
        hv::putln!(i, " squared is ", square(i));
    }
    hv::putln!("template: done");
} // returning halts the VM (exit status 0); a panic prints where and why, and fails it
