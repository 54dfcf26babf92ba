/* partial.c -> partial.img (version B): an unfinished last line.
 * With several VMs the hypervisor prints it with the [vmN] prefix and a
 * newline added when the VM halts; with one VM stdout is exactly this. */
#include "hv.h"

void guest_main(void)
{
    puts_e9("complete line\nunfinished");
}
