/* nulltrap.c -> nulltrap.img (version A): a NULL pointer the compiler can see.
 * find_node() returns NULL when the list is empty, and the list is always
 * empty here.  At -O2, gcc proves that the store to node->next goes through a
 * NULL pointer: it keeps the store (to address 8, which is RAM, so it
 * silently overwrites bytes of _start) and puts a ud2 right after it, so the
 * program stops there instead of running on with the damage (#UD, a triple
 * fault: there is no interrupt table).  The crash report says that the
 * compiler put the ud2 there, after a NULL access.  Built with DEBUG=1 (-O0)
 * the compiler does not look: the store happens, the guest runs on and halts,
 * and the hypervisor warns that the guest overwrote its own code. */
#include "hv.h"

struct node {
    uint64_t value;
    struct node *next;
};

static struct node *list_head;          /* the list is empty */

static struct node *find_node(uint64_t value)
{
    for (struct node *n = list_head; n; n = n->next)
        if (n->value == value)
            return n;
    return 0;
}

/* noinline: the crash report names this function, not its caller. */
static void __attribute__((noinline)) link_after(uint64_t value, struct node *new_node)
{
    struct node *node = find_node(value);   /* NULL: not found */

    node->next = new_node;                  /* -O2: the store, then ud2 */
}

void guest_main(void)
{
    puts_e9("linking a node\n");
    link_after(7, (struct node *)0x1122334455667788UL);
    puts_e9("linked\n");
    halt();          /* returning would run _start's overwritten bytes */
}
