"""Orderfiles: the executed functions of each object in the order they first ran, one
symbol per line, as lld's `--symbol-ordering-file` reads them. Relinked with it (and
`-ffunction-sections`), code that runs together lies together: the start of a program
touches fewer pages, as BOLT or Propeller would lay it out, without an instrumented build.

One file per object, since a link makes one object and lld warns of every symbol the file
names that the link lacks. Lines starting with '#' are comments to lld.

Hit mode sees first hits, so its order is the order of execution. Count mode does not: it
orders by calls, busiest first, which keeps the hot code together but not in sequence.
Functions whose first hit went unseen (a lost event) follow the timed ones, busiest first.
"""

from __future__ import annotations

import os

from bpfcov.report.model import FunctionRow, ObjectReport, Report
from bpfcov.report.reporter import Reporter, WriteContext


def ordered_symbols(obj: ObjectReport) -> list[str]:
    """The symbols of the object's executed out-of-line functions, first run first."""
    def key(f: FunctionRow) -> tuple[bool, int, int, int]:
        return (f.first_hit_ns == 0, f.first_hit_ns, -f.calls, f.address)

    # Only out-of-line code that ran has a section worth moving: not a function whose
    # inlined copies alone ran (they lie in their callers), nor one that exists only inlined.
    executed = [f for f in obj.functions if f.calls > 0 and f.probe != "inlined" and f.size > 0]
    symbols, seen = [], set()
    for f in sorted(executed, key=key):
        symbol = f.name.split("@", 1)[0]  # a versioned name (memcpy@GLIBC_2.14) links as its base
        if symbol not in seen:
            seen.add(symbol)
            symbols.append(symbol)
    return symbols


def file_names(objects: list[ObjectReport]) -> list[str]:
    """A file name per object: its base name, with its build-id where two share one."""
    bases = [os.path.basename(o.path) or "object" for o in objects]
    names: list[str] = []
    for o, base in zip(objects, bases):
        shared = bases.count(base) > 1
        names.append(f"{base}-{(o.build_id or str(len(names)))[:12]}.txt" if shared else f"{base}.txt")
    return names


class OrderfileReporter(Reporter):
    name = "orderfile"
    file_name = "orderfiles"
    needs_plan = False
    help = "per object, the executed functions in first-run order, for lld's --symbol-ordering-file"
    folder = True

    def write(self, report: Report, out, context: WriteContext) -> None:
        order = "first hit" if report.mode == "hit" else "calls, busiest first (count mode sees no first hits)"
        for obj, file_name in zip(report.objects, file_names(report.objects)):
            symbols = ordered_symbols(obj)
            with open(os.path.join(out, file_name), "w") as f:
                path = obj.path.replace("\n", "?")  # a newline would end the comment
                f.write(f"# bpfcov orderfile for {path}" + (f" (build-id {obj.build_id})" if obj.build_id else "")
                        + f"\n# {len(symbols)} executed functions, ordered by {order}\n")
                f.writelines(f"{s}\n" for s in symbols)
