/* reader.c -> reader.img (version C): print the shared file.  Run beside
 * cow.img: this VM still sees the original, not cow's private copy.
 * Output: "reader sees:\n" <shared.txt> "reader done\n". */
#include "hv.h"

void guest_main(void)
{
    puts_e9("reader sees:\n");
    cat_file("shared.txt");
    puts_e9("reader done\n");
}
