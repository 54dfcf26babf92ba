/* debugme.c -> debugme.img + debugme.elf: a guest to try gdb on (make gdb).
 *
 * Built with -O0 -g (see Makefile), so that every variable lives in memory
 * and every line has code: `next`, `print` and `watch` behave as in a
 * textbook.
 *
 *   cd version_a && ./mini_hypervisor -m 2 -p 4 -g ../guest/debugme.img --gdb 1234
 *   gdb ../guest/debugme.elf -ex 'target remote :1234'
 *   (gdb) break square      next      print counter      watch counter
 *
 * What there is to look at:
 *   counter        a global, one more at each call of square(): `watch counter`
 *   square(n)      a function called in a loop of three: `break square`
 *   result         a local variable of square(): `print result`, `set var`
 *   total          the sum of the squares, printed at the end
 * If the first byte on stdin is 'c', the guest jumps to an address outside
 * RAM and crashes (a triple fault): gdb shows SIGSEGV there.
 *
 * Output (stdin not 'c'):
 *   debugme: 1 4 9\n
 *   debugme: total 14, counter 3\n                                      */
#include "hv.h"

unsigned long counter;          /* calls of square() so far */
unsigned long total;            /* sum of the squares */

/* Where the crash path jumps: 3 GiB, far outside every guest's RAM. */
#define BAD_ADDRESS 0xc0000000UL

unsigned long square(unsigned long n)
{
    unsigned long result = n * n;

    counter = counter + 1;
    return result;
}

void guest_main(void)
{
    unsigned long i;
    unsigned long s;

    puts_e9("debugme:");
    for (i = 1; i <= 3; i++) {
        s = square(i);
        total = total + s;
        putchar_e9(' ');
        put_udec(s);
    }
    puts_e9("\ndebugme: total ");
    put_udec(total);
    puts_e9(", counter ");
    put_udec(counter);
    putchar_e9('\n');
    if (getchar_e9() == 'c') {
        puts_e9("debugme: jumping to 0xc0000000\n");
        ((void (*)(void))BAD_ADDRESS)();   /* not mapped: page fault, no IDT: triple fault */
    }
}
