/* nullwrite.c -> nullwrite.img (version A): a write through a NULL pointer.
 * Address 0 is RAM and holds _start, so nothing faults: the store to
 * node->next (offset 8 of a NULL struct pointer) silently overwrites the
 * bytes 0x8..0xf of _start's code, and the guest then halts normally
 * (exit status 0).  At the end the hypervisor compares the code in RAM with
 * nullwrite.elf and warns that the guest overwrote its own code there. */
#include "hv.h"

struct node {
    uint64_t value;
    struct node *next;
};

/* Not static, and the pointer comes from memory, so the compiler cannot
 * see that it is NULL (it would otherwise turn the store into ud2). */
struct node *volatile list_head;

void guest_main(void)
{
    struct node *node = list_head;      /* NULL: the list is empty */

    puts_e9("linking a node\n");
    node->next = (struct node *)0x1122334455667788UL;  /* writes 0x8..0xf */
    puts_e9("linked\n");
    halt();          /* returning would run _start's overwritten bytes */
}
