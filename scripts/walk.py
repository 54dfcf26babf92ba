# Run by scripts/walk inside gdb: which of version A's functions a run enters, and how long they are.
#
# Every function of the program, its library (the FFI room) and the toolbox gets a breakpoint
# that records its first hit and lets the run go on; closures count as part of the function
# around them, derived code (#[derive]) is left out. Each function entered is then counted in
# full: its non-blank, non-comment lines from `fn` to its closing brace.
import collections, os, subprocess
import gdb

CRATES = ("mini_hypervisor_a", "version_a", "inspect")
binary = gdb.current_progspace().filename
root = os.environ["WALK_ROOT"]
hits = set()


class Entry(gdb.Breakpoint):
    def stop(self):
        f = gdb.selected_frame().function()
        if f is not None and f.symtab is not None:
            hits.add((f.symtab.fullname(), f.line))
        self.enabled = False
        return False


gdb.execute("set pagination off")
gdb.execute("starti", to_string=True)  # a static PIE: symbol addresses are known once it is mapped
nm = subprocess.run(["nm", "-C", binary], capture_output=True, text=True).stdout
main_nm = next(int(l.split()[0], 16) for l in nm.splitlines() if l.endswith(" T main"))
main_now = int(gdb.execute("info address main", to_string=True).split(" is at ")[1].split()[0].rstrip("."), 16)
for line in nm.splitlines():
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1] in "tT" and "{{closure}}" not in parts[2]:
        if any(parts[2].startswith(c + "::") or parts[2].startswith("<" + c + "::") for c in CRATES):
            Entry("*" + hex(int(parts[0], 16) - main_nm + main_now), internal=True)
gdb.execute("continue", to_string=True)


def lines_of(path, decl):
    """Non-blank, non-comment lines of the function declared at line `decl`, brace to brace."""
    src = open(path).read().split("\n")
    if "fn " not in src[decl - 1]:
        return None  # derived code: its "line" is the #[derive] or the struct
    count, depth, started = 0, 0, False
    for line in src[decl - 1:]:
        text = line.strip()
        if text and not text.startswith("//"):
            count += 1
        code = line.split("//")[0] if '"' not in line else line
        depth += code.count("{") - code.count("}")
        started |= "{" in code
        if started and depth <= 0:
            return count
    return count


rows = sorted({(p, l, lines_of(p, l)) for p, l in hits if lines_of(p, l) is not None})
files = collections.Counter()
for path, line, n in rows:
    files[os.path.relpath(path, root)] += n
    print(f"{n:4d}  {os.path.relpath(path, root)}:{line}")
print(f"\n{sum(n for _, _, n in rows)} lines in {len(rows)} functions over {len(files)} files:")
for path, n in files.most_common():
    print(f"{n:6d}  {path}")
