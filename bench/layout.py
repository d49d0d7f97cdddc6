"""The orderfile bench: the sqlite workload linked by lld from objects with a section per
function, once as the linker lays it out and once in the order of a bpfcov orderfile
taken from a hit-mode run of it. What the layout changes is how much memory the running
code touches, so the figures are the pages the executed functions span, the page faults
of a run (warm: the file in the page cache; cold: dropped from it first, so each fault
reads the disk), iTLB misses where perf can count them, and the program's own time.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.figures import summarize

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ROOT / "sample_targets/build/sections"
BPFCOV = [sys.executable, "-m", "bpfcov"]
PAGE = 4096


def _link(output: Path, *flags: str) -> Path:
    subprocess.run(["gcc", "-fuse-ld=lld", "-o", str(output), *flags, str(SECTIONS / "workload.o"),
                    str(SECTIONS / "sqlite3.o"), "-lm"], check=True, capture_output=True, text=True)
    return output


def _functions(binary: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of each defined function with code."""
    out = subprocess.run(["readelf", "-sW", str(binary)], capture_output=True, text=True, check=True).stdout
    found: dict[str, tuple[int, int]] = {}
    for f in (line.split() for line in out.splitlines()):
        if len(f) >= 8 and f[3] == "FUNC" and f[6] != "UND" and f[2] != "0":
            found.setdefault(f[7], (int(f[1], 16), int(f[2], 0)))
    return found


def _pages_spanned(binary: Path, symbols: list[str]) -> int:
    functions = _functions(binary)
    pages = set()
    for name in symbols:
        address, size = functions[name]
        pages.update(range(address // PAGE, (address + size - 1) // PAGE + 1))
    return len(pages)


def _cached_pages(path: Path) -> int:
    """Pages of the file in the page cache (mincore on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    with open(path, "rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    try:
        pages = (size + PAGE - 1) // PAGE
        vector = ctypes.create_string_buffer(pages)
        if libc.mincore(address, size, vector) != 0:
            raise OSError(ctypes.get_errno(), f"mincore {path}")
        return sum(b & 1 for b in vector.raw)
    finally:
        libc.munmap(address, size)


def _run(binary: Path, n: int, cold: bool, stderr_path: Path) -> dict:
    """One run, with its own resource usage (wait4: this child's, not the others')."""
    if cold:
        with open(binary, "rb") as f:
            os.fsync(f.fileno())  # dirty pages (a file just linked) would stay cached
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        if _cached_pages(binary):
            raise SystemExit(f"bench: {binary} stays in the page cache; cold runs cannot be measured")
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([str(binary), str(n)], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {binary.name} {n} exited {proc.returncode}")
    seconds = float(re.search(r"workload-seconds: ([\d.]+)", stderr_path.read_text()).group(1))
    row = {"seconds": seconds, "minor_faults": usage.ru_minflt, "major_faults": usage.ru_majflt}
    if cold:  # what the run read of the file, readahead included
        row["pages_read"] = _cached_pages(binary)
    return row


def _readahead_kib(path: Path) -> int | None:
    """The read-ahead of the disk holding `path`: how much one major fault may read."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (block / "queue", block / ".." / "queue"):  # a whole disk, or a partition's disk
        if (queue / "read_ahead_kb").exists():
            return int((queue / "read_ahead_kb").read_text())
    return None


def _itlb_misses(binary: Path, n: int) -> str:
    """perf's count of iTLB misses, or what perf said when it cannot count them here."""
    result = subprocess.run(["perf", "stat", "-x,", "-e", "iTLB-load-misses", str(binary), str(n)],
                            capture_output=True, text=True)
    for line in result.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and "iTLB" in fields[2]:
            return fields[0] if fields[0].isdigit() else fields[0].strip("<>") or "not counted"
    return (result.stderr.strip().splitlines() or ["perf gave no answer"])[-1][:120]


def layout_rows(n: int, runs: int, tmp: Path) -> dict:
    plain = _link(tmp / "layout-plain")
    trained = tmp / "layout-orderfile"
    subprocess.run(BPFCOV + ["run", "-q", "-o", str(trained), "--format", "orderfile", "--", str(plain), str(n)],
                   check=True, capture_output=True, cwd=ROOT)
    orderfile = trained / "orderfiles" / "layout-plain.txt"
    symbols = [s.strip() for s in orderfile.read_text().splitlines() if not s.startswith("#")]
    ordered = _link(tmp / "layout-ordered", f"-Wl,--symbol-ordering-file={orderfile}", "-Wl,--warn-symbol-ordering")
    binaries = {"lld's own layout": plain, "orderfile": ordered}
    measured: dict[str, dict[str, list[float]]] = {name: {} for name in binaries}
    for _ in range(runs):  # interleaved: plain, ordered, plain, ...
        for name, binary in binaries.items():
            for cold in (False, True):
                row = _run(binary, n, cold, tmp / "layout-stderr")
                for key, value in row.items():
                    if cold and key == "seconds":
                        continue  # a cold run's time is the disk's
                    measured[name].setdefault(f"{'cold' if cold else 'warm'}_{key}", []).append(value)
    return {
        "n": n, "executed_functions": len(symbols), "readahead_kib": _readahead_kib(plain),
        "file_kib": plain.stat().st_size // 1024,
        "text_bytes": {name: _text_bytes(b) for name, b in binaries.items()},
        "pages_spanned": {name: _pages_spanned(b, symbols) for name, b in binaries.items()},
        "itlb_misses": {name: _itlb_misses(b, n) for name, b in binaries.items()},
        "runs": {name: {key: summarize(values) for key, values in m.items()} for name, m in measured.items()},
    }


def _text_bytes(binary: Path) -> int:
    out = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\]\s+\.text\s+PROGBITS\s+\S+\s+\S+\s+(\S+)", out)
    return int(match.group(1), 16) if match else 0


def markdown(r: dict) -> list[str]:
    def cell(s: dict, digits: int = 0) -> str:
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    names = list(r["runs"])
    runs = r["runs"][names[0]]["warm_seconds"]["runs"]
    lines = ["", "## Code layout from an orderfile", "",
             f"The sqlite workload (N={r['n']:,}) linked by lld from objects with a section per function, as lld "
             "lays it out and with `--symbol-ordering-file` from bpfcov's orderfile of a hit-mode run "
             f"({r['executed_functions']} executed functions). {runs} interleaved runs of each; cold runs first "
             f"drop the binary ({r['file_kib']:,} KiB) from the page cache, so each major fault reads it again. "
             f"The disk here reads ahead {r['readahead_kib']} KiB on a fault"
             + (": one fault reads the whole file, whatever the layout." if (r["readahead_kib"] or 0) >= r["file_kib"]
                else ".")
             + " Pages spanned are counted from the symbol table: 4 KiB pages that hold an executed function.", "",
             "| layout | .text KiB | pages the executed code spans | warm minor faults | cold major faults | "
             "cold: pages read of the file | program s, warm | iTLB misses |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        m = r["runs"][name]
        lines.append(f"| {name} | {r['text_bytes'][name] / 1024:.0f} | {r['pages_spanned'][name]} | "
                     f"{cell(m['warm_minor_faults'])} | {cell(m['cold_major_faults'])} | "
                     f"{cell(m['cold_pages_read'])} | {cell(m['warm_seconds'], 4)} | {r['itlb_misses'][name]} |")
    return lines
