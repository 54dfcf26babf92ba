/* snoop.c -> snoop.img (version C): isolation, as seen from a second VM.
 * Run beside cow.img (vm0), with -f ../guest/shared.txt: this VM prints
 * the shared file (always the original, whatever cow.img writes), then
 * tries to read cow.img's private notes.txt, by its name and by a path
 * into cow's private directory.  Both are refused: a name means this VM's
 * own files or a shared file, and a path is not a name.
 * Output (whether or not cow.img has run yet):
 *   snoop sees:\n <shared.txt>
 *   open notes.txt -> -1\n
 *   open ../cow_vm0_files/notes.txt -> -1\n
 *   snoop done\n                                                      */
#include "hv.h"

static void try_open(const char *name)
{
    int vfd = f_open(name, O_READ);

    puts_e9("open ");
    puts_e9(name);
    puts_e9(" -> ");
    put_dec(vfd);
    putchar_e9('\n');
    if (vfd >= 0)
        f_close(vfd);
}

void guest_main(void)
{
    puts_e9("snoop sees:\n");
    cat_file("shared.txt");
    try_open("notes.txt");
    try_open("../cow_vm0_files/notes.txt");
    puts_e9("snoop done\n");
}
