"""Shared fixtures: the sample targets, BPF availability, and running bpfcov itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "sample_targets" / "build"


def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc's Python module (python3-bpfcc) is not importable"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "the kernel has no BTF"
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        return "no kernel headers for bcc"
    return None


def require_bpf() -> None:
    """Fail in CI (BPFCOV_REQUIRE_BPF=1), and skip elsewhere, when BPF cannot be used."""
    reason = bpf_unavailable_reason()
    if reason:
        if os.environ.get("BPFCOV_REQUIRE_BPF") == "1":
            pytest.fail(f"BPF is required here but unavailable: {reason}")
        pytest.skip(f"BPF unavailable: {reason}")


@pytest.fixture
def bpf():
    """Tests that trace take this fixture (module-scoped fixtures call require_bpf)."""
    require_bpf()


# Every way bpfcov can attach probes: engine tests run once for each (this kernel has both;
# older ones have only perf-event).
ATTACH_METHODS = ["uprobe-multi", "perf-event"]


@pytest.fixture(params=ATTACH_METHODS)
def attach_method(request) -> str:
    return request.param


def target(flavour: str, name: str) -> str:
    path = BUILD / flavour / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the sample targets with `make targets`")
    return str(path)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test session indexes into its own cache, so no test depends on another's; and
    no test asks a debuginfod server the machine happens to name (none is reachable)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(tmp_path_factory.getbasetemp() / "debuginfod-client"))


def bpfcov(*args, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the bpfcov CLI as a user would, in a child process."""
    result = subprocess.run([sys.executable, "-m", "bpfcov", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"bpfcov {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def gcov_counts(binary: str, args: list[str], tmp_path: Path, env: dict | None = None) -> dict[str, int]:
    """The oracle: gcov's call count of every function, running the --coverage build of
    `binary` with `args`. Keys are mangled names, as bpfcov's identities are."""
    counts: dict[str, int] = {}
    for per_file in gcov_counts_of([binary, *args], tmp_path, env).values():
        for name, count in per_file.items():
            counts[name] = counts.get(name, 0) + count
    return counts


def gcov_counts_of(command: list[str], tmp_path: Path, env: dict | None = None, cwd=None) -> dict[str, dict[str, int]]:
    """gcov's call counts after `command`, which runs --coverage builds (a runner may run
    each many times: gcov sums the runs in its .gcda files). Keyed by the .gcda file's path
    (which names the program it belongs to), then by mangled function name."""
    prefix = tmp_path / "gcov"
    run_env = dict(os.environ, GCOV_PREFIX=str(prefix), **(env or {}))
    subprocess.run(command, check=False, capture_output=True, env=run_env, timeout=300, cwd=cwd)
    found: dict[str, dict[str, int]] = {}
    for gcda in prefix.rglob("*.gcda"):
        original = str(gcda).replace(str(prefix), "", 1)
        shutil.copy(Path(original).with_suffix(".gcno"), gcda.with_suffix(".gcno"))
        out = subprocess.run(["gcov", "--json-format", "--stdout", gcda.name], cwd=gcda.parent,
                             capture_output=True, text=True, check=True).stdout
        counts = found.setdefault(original, {})
        for line in out.splitlines():
            if not line.strip():
                continue
            for f in json.loads(line)["files"]:
                for fn in f["functions"]:
                    counts[fn["name"]] = counts.get(fn["name"], 0) + fn["execution_count"]
    return found


def assert_counts_equal_gcov(ours: dict[str, int], oracle: dict[str, int]) -> int:
    """Every function gcov counted has bpfcov's count; one bpfcov does not know ran never
    (or is a static constructor gcov names but no symbol does). Returns how many compared."""
    compared = 0
    for function, expected in oracle.items():
        if function in ours:
            assert ours[function] == expected, f"{function}: bpfcov {ours[function]}, gcov {expected}"
            compared += 1
        else:
            assert expected == 0 or function.startswith("_GLOBAL__"), \
                f"{function} ran {expected}x but is not in the index"
    return compared


def read_until_tracing(tracer: subprocess.Popen) -> None:
    """Read a bpfcov's stderr until it says it is tracing. Progress lines may come first:
    indexing a big object, or any object on a slow machine, takes over a second."""
    for line in tracer.stderr:
        if "Tracing" in (line.decode() if isinstance(line, bytes) else line):
            return
    raise AssertionError(f"bpfcov ended before tracing (exit {tracer.wait()})")


def coverage_json(out_dir: Path) -> dict:
    return json.loads((out_dir / "coverage.json").read_text())


def function_counts(report: dict, object_name: str | None = None) -> dict[str, int]:
    """name -> count for measured functions, from coverage.json, optionally one object."""
    counts = {}
    for obj in report["objects"]:
        if object_name and os.path.basename(obj["path"]) != object_name:
            continue
        for f in obj["functions"]:
            if f["status"] != "unmeasured":
                counts[f["name"]] = counts.get(f["name"], 0) + f["count"]
                for alias in f["aliases"]:
                    counts[alias] = counts.get(alias, 0) + f["count"]
    return counts


# -- leak checks that other bpfcov sessions on the machine cannot disturb -------------------

BPF_KINDS = ("link", "prog", "map")


def bpf_ids() -> set[tuple[str, int]]:
    """Every BPF link, program and map on the machine, as (kind, id)."""
    found = set()
    for kind in BPF_KINDS:
        out = subprocess.run(["bpftool", kind, "list", "-j"], capture_output=True, text=True, check=True).stdout
        found |= {(kind, o["id"]) for o in json.loads(out or "[]")}
    return found


def bpf_holders() -> dict[tuple[str, int], set[int]]:
    """(kind, id) -> the processes holding a descriptor of it, read from /proc/*/fdinfo."""
    holders: dict[tuple[str, int], set[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            names = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for name in names:
            try:
                with open(f"/proc/{pid}/fdinfo/{name}") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("link_id", "prog_id", "map_id") and value.strip().isdigit():
                    holders.setdefault((key[:-3], int(value)), set()).add(int(pid))
    return holders


def our_processes() -> set[int]:
    """This test process and its descendants."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    ours = {os.getpid()}
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in ours} - ours
        ours |= more
        grew = bool(more)
    return ours


def bpf_leaks(before: set[tuple[str, int]], wait: float = 10.0) -> set[tuple[str, int]]:
    """The BPF objects made since `before` that this test left: held by this process or a
    descendant, or by no process at all (pinned, or never released). Objects another bpfcov
    session holds (another suite on the same machine) are not this test's. The kernel frees
    a closed object after an RCU grace period, so this waits up to `wait` seconds."""
    deadline = time.time() + wait
    while True:
        holders, ours = bpf_holders(), our_processes()
        leaks = {o for o in bpf_ids() - before if not holders.get(o) or holders[o] & ours}
        if not leaks or time.time() >= deadline:
            return leaks
        time.sleep(0.1)


def bpf_links_held_by(pid: int) -> int:
    return sum(1 for (kind, _), pids in bpf_holders().items() if kind == "link" and pid in pids)
