"""gdb's view of the order in which a program's functions first run: the oracle for the
orderfile (tests/test_orderfile.py). Run inside gdb:

    FIRST_CALLS_ADDRESSES=in FIRST_CALLS_OUT=out gdb -batch -nx -x gdb_first_calls.py --args PROGRAM...

A breakpoint on each address (function entries), each deleted at its first stop: the
stops, in order, are the first calls. ptrace and int3, no uprobe: independent of bpfcov.
"""

import os

import gdb  # type: ignore[import-not-found]  # exists only inside gdb

gdb.execute("set pagination off")
gdb.execute("set confirm off")
with open(os.environ["FIRST_CALLS_ADDRESSES"]) as f:
    waiting = {a: gdb.Breakpoint(f"*{a:#x}", internal=True) for a in (int(word, 16) for word in f.read().split())}
first_calls = []
gdb.execute("run", to_string=True)
while gdb.selected_inferior().pid:
    pc = int(gdb.parse_and_eval("$pc"))
    if pc not in waiting:
        raise gdb.GdbError(f"stopped at {pc:#x}, no breakpoint of ours (a signal?)")
    first_calls.append(pc)
    waiting.pop(pc).delete()
    gdb.execute("continue", to_string=True)
with open(os.environ["FIRST_CALLS_OUT"], "w") as f:
    f.writelines(f"{a:#x}\n" for a in first_calls)
