"""bpfcov as a library; the command line is one of its clients.

    import bpfcov
    cov = bpfcov.run(["./myprog", "--flag"], mode="count", libs=True)
    print(cov.exit_status, cov.totals["functions_hit"])
    cov.write("out", formats=("lcov", "html"))
    bpfcov.load("nightly/bpfcov.db").merge(cov).save("all.db")

Tracing needs root, and (for its signal handling) the main thread. Every kernel object a
call creates is released before it returns or raises. Heavy modules are imported inside
the functions, so `import bpfcov` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from bpfcov.data.status import Mode
from bpfcov.errors import BpfcovError

if TYPE_CHECKING:
    from bpfcov.data.model import RunCoverage
    from bpfcov.engine.targets import Ending
    from bpfcov.report.model import Report


class Coverage:
    """What one run measured, or several merged: ready to report, save or merge."""

    def __init__(self, data: RunCoverage, ending: Ending | None = None):
        self.data = data
        self._ending = ending

    @property
    def exit_status(self) -> int | None:
        """The traced command's exit status (bpfcov.run only; None if a signal killed it)."""
        return self._ending.exit_status if self._ending is not None else None

    @property
    def signal(self) -> int | None:
        """The signal that killed the traced command (bpfcov.run only)."""
        return self._ending.signal if self._ending is not None else None

    def report(self, *, path_map: Sequence[tuple[str, str]] = (), relative_to: str | None = None,
               include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Report:
        """The shaped report every format writes (report/pipeline.py)."""
        from bpfcov.report.pipeline import build_report
        return build_report(self.data, _report_options(path_map, relative_to, include, exclude))

    @property
    def totals(self) -> dict:
        """The totals of coverage.json: functions, functions_hit, functions_unmeasured,
        dead_bytes, lines, lines_hit."""
        from bpfcov.report.formats.json import totals_json
        return totals_json(self.report().totals)

    def functions(self) -> list[dict]:
        """Every function as coverage.json gives it, with the path of its object."""
        from bpfcov.report.formats.json import function_json
        return [dict(function_json(f), object=o.path) for o in self.report().objects for f in o.functions]

    def write(self, out_dir: str, formats: Iterable[str] | None = None, *, source_root: str | None = None,
              lcov_format: int = 1, debuginfod_sources: bool = False, **report_options) -> list[str]:
        """Write the reports named by `formats` (default: lcov, html, json) into `out_dir`;
        return the paths written. `debuginfod_sources`: as --debuginfod-sources (from the
        servers in DEBUGINFOD_URLS). `report_options` are those of report()."""
        from bpfcov.report.formats import DEFAULT_FORMATS, parse_formats
        from bpfcov.report.pipeline import build_report
        from bpfcov.report.writers import write_reports
        names = parse_formats(",".join(formats if formats is not None else DEFAULT_FORMATS))
        # The plans are made while what does not show them is written.
        report = build_report(self.data, _report_options(**report_options), plans_later=True)
        return write_reports(report, out_dir, names, source_root, lcov_format, debuginfod_sources=debuginfod_sources)

    def save(self, path: str) -> None:
        """Write the data file (SQLite, replaced atomically)."""
        from bpfcov.data import store
        try:
            store.write(path, self.data)
        except OSError as e:
            raise BpfcovError(f"cannot write {path}: {e.strerror}") from None

    def merge(self, other: Coverage) -> Coverage:
        """The sums of both runs' counts (the same binaries matched by build-id)."""
        from bpfcov.data.merge import merge
        return Coverage(merge([self.data, other.data]))


def _report_options(path_map: Sequence[tuple[str, str]] = (), relative_to: str | None = None,
                    include: Sequence[str] = (), exclude: Sequence[str] = ()):
    from bpfcov.report.pipeline import ReportOptions
    return ReportOptions(path_maps=list(path_map), relative_to=relative_to, include=list(include),
                         exclude=list(exclude))


def load(path: str) -> Coverage:
    """The coverage in a data file written by any bpfcov command."""
    from bpfcov.data import store
    return Coverage(store.read(path))


def _trace_options(mode: str, lines: bool, include: Iterable[str], exclude: Iterable[str], quiet: bool,
                   attach_method: str):
    from bpfcov.engine.attach import CHOICES
    from bpfcov.engine.session import TraceOptions
    if attach_method not in CHOICES:
        raise BpfcovError(f"unknown attach_method {attach_method!r}: choose one of {', '.join(CHOICES)}")
    return TraceOptions(mode=Mode.parse(mode).value, lines=lines, include=list(include), exclude=list(exclude),
                        quiet=quiet, attach_method=attach_method)


def _debuginfod_servers(urls: Sequence[str]):
    """DEBUGINFOD_URLS replaced by `urls` for one trace (none given: left as it is)."""
    from bpfcov.probes.debuginfod import check_url, servers
    if isinstance(urls, str):
        urls = [urls]
    try:
        return servers([check_url(url) for url in urls])
    except ValueError as e:
        raise BpfcovError(f"debuginfod: {e}") from None


def _done(traced, output: str | None) -> Coverage:
    if traced.coverage is None:
        raise BpfcovError("tracing did not start")
    coverage = Coverage(traced.coverage, traced.ending)
    if output is not None:
        os.makedirs(output, exist_ok=True)
        coverage.save(os.path.join(output, "bpfcov.db"))
    return coverage


def _exec_policy(include_paths: Iterable[str], exclude_paths: Iterable[str], all_execs: bool):
    from bpfcov.engine.execs import ExecPolicy
    return ExecPolicy.from_options(list(include_paths), list(exclude_paths), all_execs)


def run(argv: Sequence[str], *, output: str | None = None, mode: str = "hit", lines: bool = False,
        libs: bool = False, objects: Iterable[str] = (), include: Iterable[str] = (), exclude: Iterable[str] = (),
        include_paths: Iterable[str] = (), exclude_paths: Iterable[str] = (), all_execs: bool = False,
        duration: float | None = None, attach_method: str = "auto", debuginfod: Sequence[str] = (),
        quiet: bool = True) -> Coverage:
    """Run a command and cover it and every process it starts. The programs they exec are
    probed when they lie under `include_paths` (default: the current folder) and not under
    `exclude_paths`, or all of them with `all_execs`. With `output`, the data file is
    written there as OUTPUT/bpfcov.db. `attach_method`: as --attach-method (auto,
    uprobe-multi, perf-event). `debuginfod`: server URLs, as --debuginfod."""
    from bpfcov.engine.targets import trace_command
    options = _trace_options(mode, lines, include, exclude, quiet, attach_method)
    with _debuginfod_servers(debuginfod):
        traced = trace_command(list(argv), options, list(objects), libs,
                               duration, execs=_exec_policy(include_paths, exclude_paths, all_execs))
    return _done(traced, output)


def attach(pid: int, *, output: str | None = None, mode: str = "hit", lines: bool = False, libs: bool = False,
           objects: Iterable[str] = (), include: Iterable[str] = (), exclude: Iterable[str] = (),
           include_paths: Iterable[str] = (), exclude_paths: Iterable[str] = (), all_execs: bool = False,
           duration: float | None = None, attach_method: str = "auto", debuginfod: Sequence[str] = (),
           quiet: bool = True) -> Coverage:
    """Cover a running process (and the children it forks, and the programs they exec, as
    for run) until it exits or `duration` ends."""
    from bpfcov.engine.targets import trace_pid
    options = _trace_options(mode, lines, include, exclude, quiet, attach_method)
    with _debuginfod_servers(debuginfod):
        traced = trace_pid(pid, options, list(objects), libs, duration,
                           execs=_exec_policy(include_paths, exclude_paths, all_execs))
    return _done(traced, output)


def watch(path: str | Sequence[str], *, output: str | None = None, mode: str = "hit", lines: bool = False,
          include: Iterable[str] = (), exclude: Iterable[str] = (), duration: float | None = None,
          attach_method: str = "auto", debuginfod: Sequence[str] = (), quiet: bool = True) -> Coverage:
    """Cover every process on the host that maps the object(s) at `path`, for `duration`
    seconds (or until SIGINT/SIGTERM)."""
    from bpfcov.engine.targets import trace_paths
    paths = [path] if isinstance(path, str) else list(path)
    options = _trace_options(mode, lines, include, exclude, quiet, attach_method)
    with _debuginfod_servers(debuginfod):
        traced = trace_paths(paths, options, duration)
    return _done(traced, output)
