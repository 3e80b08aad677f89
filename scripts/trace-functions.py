# trace-functions.py -- gdb script of scripts/hot-symbols.sh: records, in the order they first
# run, the functions one call of a plugin runs natively (so with the string functions that
# glibc picks for this CPU, which an emulator such as valgrind would not pick).
#
#   gdb -q -batch -ex 'python FUNCS="f"; OUT="o"' -x trace-functions.py \
#       -ex 'run <in >out' --args plugin
#
# FUNCS lists "hex-address name" for every function of the binary (from `nm`), OUT receives
# one name per line. A one-shot breakpoint on each function start: a function costs one stop
# the first time it runs and nothing after.
import gdb

gdb.execute("set breakpoint always-inserted on")
gdb.execute("set pagination off")
gdb.execute("set confirm off")

ran = []


class FirstRun(gdb.Breakpoint):
    def stop(self):
        ran.append(self.function_name)
        self.enabled = False
        return False


seen = set()
with open(FUNCS) as funcs:  # noqa: F821 (set by the caller)
    for line in funcs:
        address, name = line.split()
        if address in seen:  # an alias of a function already watched
            continue
        seen.add(address)
        bp = FirstRun("*0x" + address, internal=True)
        bp.function_name = name
        bp.silent = True


def write_out(_event):
    with open(OUT, "w") as out:  # noqa: F821
        out.write("".join(name + "\n" for name in ran))


gdb.events.exited.connect(write_out)

# With FOLLOW_CHILD set, gdb follows a forked child instead, and stops when that child
# execs (the caller then writes the list with write_out): the child of posix_spawn runs in
# the parent's address space until it execs, so its code counts against the parent's
# memory too.
if globals().get("FOLLOW_CHILD"):
    gdb.execute("set follow-fork-mode child")
    gdb.execute("catch exec")
