"""Options and steps shared by several subcommands.

The command modules import the engine and the report writers inside the functions that
use them: `bpfcov run` starts compiling its BPF program before loading numpy, jinja2 and
the rest, so that the two overlap (see bpfcov/commands/tracing.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from bpfcov.engine.attach import AUTO
from bpfcov.engine.attach import CHOICES as ATTACH_CHOICES
from bpfcov.errors import BpfcovError
from bpfcov.report.formats import DEFAULT_FORMATS, formats_help, parse_formats


class Command:
    """A subcommand: its help is its docstring's first line, its description the rest."""

    name = ""

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text}")
    return value


def percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100: {text}")
    return value


def path_map(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {text!r}")
    return old, new


def debuginfod_url(text: str) -> str:
    from bpfcov.probes.debuginfod import check_url
    try:
        return check_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_debuginfod_option(group) -> None:
    group.add_argument("--debuginfod", action="append", default=[], type=debuginfod_url, metavar="URL",
                       help="fetch missing debug info by build-id from this debuginfod server (repeatable; "
                            "default: the servers in DEBUGINFOD_URLS)")


def add_report_options(parser: argparse.ArgumentParser, with_output: bool = True) -> None:
    group = parser.add_argument_group("reports")
    if with_output:
        group.add_argument("-o", "--output", metavar="OUT", default="bpfcov-out",
                           help="folder for bpfcov.db and the reports (default: ./bpfcov-out)")
    group.add_argument("--format", default=",".join(DEFAULT_FORMATS),
                       help=f"reports to write, comma-separated (default: {','.join(DEFAULT_FORMATS)}): "
                            f"{formats_help()}")
    group.add_argument("--lcov-format", type=int, choices=(1, 2), default=1,
                       help="2 adds function end lines to FN records (lcov 2.x reads them; 1.16 does not)")
    group.add_argument("--path-map", type=path_map, action="append", default=[], metavar="OLD=NEW",
                       help="rewrite source paths starting with OLD to start with NEW (repeatable)")
    group.add_argument("--relative-to", metavar="DIR", help="write source paths relative to DIR")
    group.add_argument("--source-root", metavar="DIR",
                       help="read source files only from under DIR for the HTML pages (default: the current folder)")
    group.add_argument("--debuginfod-sources", action="store_true",
                       help="fetch the source files the HTML pages cannot read locally from debuginfod "
                            "(off by default: a server may send any file under any name)")
    group.add_argument("--fail-under", type=percent, metavar="PCT",
                       help="exit with status 2 when function coverage (line coverage with --lines) is below PCT")


def add_trace_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracing")
    group.add_argument("--mode", choices=("hit", "count"), default="hit",
                       help="hit (default): probes leave after the first hit, near-zero cost, counts are lower "
                            "bounds; count: every call counted, costs a trap per call")
    group.add_argument("--lines", action="store_true", help="probe every source line (DWARF line table) too")
    group.add_argument("--object", action="append", default=[], metavar="PATH",
                       help="also trace this ELF object, executable or shared library (repeatable)")
    group.add_argument("--include", action="append", default=[], metavar="REGEX",
                       help="trace only functions whose name matches (repeatable)")
    group.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                       help="do not trace functions whose name matches (repeatable)")
    group.add_argument("--debug-dir", action="append", default=[], metavar="DIR",
                       help="also look for separate debug files under DIR")
    add_debuginfod_option(group)
    group.add_argument("--attach-method", choices=ATTACH_CHOICES, default=AUTO,
                       help="how probes are attached: uprobe-multi (Linux 6.6+, few links) or perf-event "
                            "(Linux 5.15+, one per probe); auto (default) asks the kernel which it has")
    group.add_argument("--interval", type=positive_float, metavar="S",
                       help="write a snapshot of bpfcov.db every S seconds")
    group.add_argument("--quiet", "-q", action="store_true", help="no messages, only errors")


def add_exec_options(parser: argparse.ArgumentParser) -> None:
    """Which programs that the traced processes exec are probed (run, attach)."""
    group = parser.add_argument_group("programs the trace execs (test runners, scripts)")
    group.add_argument("--include-path", action="append", default=[], metavar="DIR",
                       help="probe programs under DIR (repeatable; default: the current folder, "
                            "system folders such as /usr/bin left out)")
    group.add_argument("--exclude-path", action="append", default=[], metavar="DIR",
                       help="never probe programs under DIR (repeatable)")
    group.add_argument("--all-execs", action="store_true",
                       help="probe every program the trace execs, shells and compilers included")


def check_output_dir(path: str) -> None:
    """Fail before attaching anything if the output folder cannot be written."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise BpfcovError(f"output folder {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BpfcovError(f"output folder {path} is not writable")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise BpfcovError(f"cannot create output folder {path}: {e.strerror}") from None


def write_all(run, args, data_file: str | None, quiet: bool) -> int:
    """Write the data file (if asked) and the reports; print the summary; apply --fail-under."""
    from bpfcov.api import Coverage
    from bpfcov.probes.model import ProbeStatus
    from bpfcov.report.pipeline import ReportOptions, build_report
    from bpfcov.report.writers import write_reports

    coverage = Coverage(run)
    if data_file:
        coverage.save(data_file)
    # The plans are made while what does not show them is written (report/writers.py).
    report = build_report(run, ReportOptions(path_maps=args.path_map, relative_to=args.relative_to,
                                             include=args.include, exclude=args.exclude), plans_later=True)
    written = write_reports(report, args.output, parse_formats(args.format), args.source_root, args.lcov_format,
                            debuginfod_sources=args.debuginfod_sources)
    t = report.totals
    if not quiet:
        unhit = t.functions_measured - t.functions_hit
        summary = (f"{t.functions_hit:,} of {t.functions_measured:,} functions executed "
                   f"({t.function_percent:.1f}%), {unhit:,} never executed ({t.dead_bytes:,} bytes)")
        if t.functions_unmeasured:
            summary += f", {t.functions_unmeasured:,} unmeasured"
        if t.functions_no_code:
            summary += f", {t.functions_no_code:,} inlined and computed away (no code)"
        moved = sum(f.probe is ProbeStatus.MOVED for o in run.objects for f in o.index.functions)
        if moved:
            summary += f", {moved:,} probed past an entry instruction uprobes refuse (moved)"
        if run.lines:
            summary += f"; {t.lines_hit:,} of {t.lines:,} lines ({t.line_percent:.1f}%)"
        if run.mode == "hit":
            summary += "; hit mode: counts are lower bounds"
        if run.stats.get("attach_method"):
            summary += f"; {run.stats['attach_method']} links"
        print(f"bpfcov: {summary}", file=sys.stderr)
        execs = run.stats.get("execs")
        if execs and (execs["probed"] or execs["skipped"]):
            from bpfcov.engine.execs import describe
            print(f"bpfcov: {describe(execs)}", file=sys.stderr)
        if not t.functions_measured:
            print("bpfcov: warning: nothing was probed: a program under the current folder, --include-path DIR, "
                  "--all-execs or --object PATH says what to cover", file=sys.stderr)
        for path in ([data_file] if data_file else []) + written:
            print(f"bpfcov: wrote {path}", file=sys.stderr)
    if args.fail_under is not None:
        achieved = t.line_percent if run.lines else t.function_percent
        if achieved < args.fail_under:
            print(f"bpfcov: coverage {achieved:.2f}% is below --fail-under {args.fail_under:g}%", file=sys.stderr)
            return 2
    return 0


def validate_formats(args) -> None:
    formats = parse_formats(args.format)
    if "coveragepy" in formats and getattr(args, "lines", True) is False:
        raise BpfcovError("--format coveragepy needs line data (coverage.py counts lines): add --lines")
