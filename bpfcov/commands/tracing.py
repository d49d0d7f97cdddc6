"""run, attach and watch: the three subcommands that trace.

Each starts compiling its BPF program (half a second of clang, on a background thread)
as soon as its options are checked, and only then loads the engine, so that compiling,
importing and indexing overlap.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys

from bpfcov.commands.common import (
    Command,
    add_exec_options,
    add_report_options,
    add_trace_options,
    check_output_dir,
    positive_float,
    validate_formats,
    write_all,
)
from bpfcov.engine.program import ProgramBuilder, check_privileges, program_options, spare_slots
from bpfcov.errors import BpfcovError, UsageError


def add_libs_options(parser, what: str) -> None:
    parser.add_argument("--libs", action="store_true", help=f"also trace the shared libraries {what}")
    parser.add_argument("--libs-only", action="append", default=[], metavar="REGEX",
                        help="trace only the libraries whose path matches (repeatable; implies --libs): an "
                             "extension module, not the interpreter that loads it")


def _libraries_wanted(args) -> None:
    """--libs-only implies --libs; each of its patterns must compile."""
    for pattern in args.libs_only:
        try:
            re.compile(pattern)
        except re.error as e:
            raise UsageError(f"--libs-only {pattern!r}: not a regular expression ({e})") from None
    args.libs = args.libs or bool(args.libs_only)


def _options(args, libs: bool):
    from bpfcov.engine.session import TraceOptions
    return TraceOptions(mode=args.mode, lines=args.lines, include=args.include, exclude=args.exclude,
                        libs_only=tuple(getattr(args, "libs_only", ())),
                        debug_dirs=tuple(args.debug_dir), quiet=args.quiet, attach_method=args.attach_method,
                        spare_slots=spare_slots(args.lines, args.subcommand != "watch"),
                        ends_by_itself=args.subcommand == "run" or bool(getattr(args, "duration", None)))


def _exec_policy(args):
    """Made before compiling starts: its default folder is the current one (see below)."""
    from bpfcov.engine.execs import ExecPolicy
    return ExecPolicy.from_options(args.include_path, args.exclude_path, args.all_execs)


def _absolute_paths(args) -> None:
    """Make every path the user gave absolute. bcc changes the process's working folder
    while it compiles (to the kernel headers), and it compiles on another thread while
    this one goes on: a relative path resolved then would point into the headers."""
    here = os.getcwd()

    def absolute(path):
        return os.path.join(here, path) if path and not os.path.isabs(path) else path

    args.output = absolute(args.output)
    args.object = [absolute(p) for p in args.object]
    args.debug_dir = [absolute(p) for p in args.debug_dir]
    for name in ("include_path", "exclude_path"):
        if hasattr(args, name):
            setattr(args, name, [absolute(p) for p in getattr(args, name)])
    args.source_root = absolute(args.source_root or here)
    args.relative_to = absolute(args.relative_to)
    if getattr(args, "paths", None):
        args.paths = [absolute(p) for p in args.paths]
    if getattr(args, "command", None) and "/" in args.command[0]:
        args.command[0] = absolute(args.command[0])


def add_store_options(parser) -> None:
    group = parser.add_argument_group("fleet store")
    group.add_argument("--store", metavar="URL",
                       help="where the data goes: sqlite:///PATH (a data file; default OUT/bpfcov.db) or "
                            "postgresql://... (a shared store, pushed at every --interval and at the end, "
                            "besides OUT/bpfcov.db; password from ~/.pgpass or PGPASSFILE)")
    group.add_argument("--host-label", metavar="NAME", default=socket.gethostname(),
                       help="this host's name in the store (default: the hostname)")


def _open_store(args, data_file: str):
    """(data file, pusher or None): a postgresql store is checked here, before anything is
    attached, so bad credentials or a missing schema cost the user nothing."""
    from bpfcov.fleet.connection import parse_store_url
    if not args.store:
        return data_file, None
    url = parse_store_url(args.store)
    if not url.is_postgresql:
        check_output_dir(os.path.dirname(url.target))
        return url.target, None
    if not args.host_label.strip():
        raise UsageError("--host-label: empty")
    from bpfcov.fleet.push import Pusher
    pusher = Pusher(url, args.host_label, args.quiet)
    pusher.check()
    pusher.start()
    return data_file, pusher


def _prepare(args) -> ProgramBuilder:
    """Check what needs no tracing, open the store, then start compiling."""
    validate_formats(args)
    if hasattr(args, "libs_only"):
        _libraries_wanted(args)
    if args.interval and getattr(args, "duration", None) and args.interval >= args.duration:
        raise UsageError(f"--interval {args.interval:g} is not shorter than --duration {args.duration:g}: "
                         "no snapshot would ever be written")
    check_privileges()
    check_output_dir(args.output)
    _absolute_paths(args)
    args.data_file, args.pusher = _open_store(args, os.path.join(args.output, "bpfcov.db"))
    builder = ProgramBuilder(program_options(args.subcommand, args.mode, getattr(args, "libs", False), args.object,
                                             args.attach_method),
                             slots_guess=ProgramBuilder.GUESS + spare_slots(args.lines, args.subcommand != "watch"))
    return builder


def _snapshot_writer(args):
    from bpfcov.data import store

    # The data file is written before its push is queued: it is the push's spool (fleet/push.py).
    def write_snapshot(run) -> None:
        key = args.pusher.stamp(run) if args.pusher is not None else None
        try:
            store.write(args.data_file, run)
        except OSError as e:
            print(f"bpfcov: warning: snapshot not written: {e.strerror}", file=sys.stderr)
        if key is not None:
            args.pusher.push(run, key)
    return write_snapshot


def _finish(args):
    """What runs once tracing has stopped: the data file and reports, then the last push."""
    def finish(run) -> int:
        key = args.pusher.stamp(run) if args.pusher is not None else None
        try:
            return write_all(run, args, args.data_file, args.quiet)
        finally:
            if key is not None:
                args.pusher.close(run, key)
    return finish


class RunCommand(Command):
    """Run a command and cover it and every process it starts, from its first instruction.

    Every program the command's processes exec is probed before it runs when it lies
    under the current folder (or --include-path); a runner such as make, sh or ctest is
    a launcher. The command's own exit status (or signal) is bpfcov's. Examples:
      bpfcov run -o out -- make test
      bpfcov run -o out -- ./myprog --flag input.txt
    """

    name = "run"

    def prepare_parser(self, parser) -> None:
        add_trace_options(parser)
        add_libs_options(parser, "the command maps, including dlopen()ed ones")
        parser.add_argument("--duration", type=positive_float, metavar="S",
                            help="stop tracing after S seconds (the command keeps running)")
        add_exec_options(parser)
        add_report_options(parser)
        add_store_options(parser)
        parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                            help="the command to run, after --")

    def run(self, args) -> int:
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        if not args.command:
            raise UsageError("no command given: bpfcov run [options] -- COMMAND [ARGS...]")
        execs = _exec_policy(args)
        builder = _prepare(args)
        from bpfcov.engine.targets import trace_command
        with builder:
            traced = trace_command(args.command, _options(args, args.libs), args.object, args.libs, args.duration,
                                   args.interval, _snapshot_writer(args), builder,
                                   after=_finish(args), execs=execs)
        status = traced.after if traced.coverage is not None else 1
        ending = traced.ending
        assert ending is not None  # run always has one
        if ending.signal is not None:
            if not args.quiet:
                print(f"bpfcov: {args.command[0]} was killed by signal {ending.signal}", file=sys.stderr)
            # Pass the signal on exactly, as a shell would see it (everything is detached by now).
            if ending.signal not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot be handled anyway
                signal.signal(ending.signal, signal.SIG_DFL)
            os.kill(os.getpid(), ending.signal)
            return 128 + ending.signal
        if ending.exit_status:
            return ending.exit_status
        return status


class AttachCommand(Command):
    """Cover a running process from now on, until Ctrl-C, --duration, or its exit.

    Example: bpfcov attach --pid 1234 --libs --duration 60 -o out
    """

    name = "attach"

    def prepare_parser(self, parser) -> None:
        parser.add_argument("--pid", type=int, required=True, help="the process to cover")
        add_libs_options(parser, "it maps")
        parser.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
        add_trace_options(parser)
        add_exec_options(parser)
        add_report_options(parser)
        add_store_options(parser)

    def run(self, args) -> int:
        execs = _exec_policy(args)
        builder = _prepare(args)
        from bpfcov.engine.targets import trace_pid
        with builder:
            traced = trace_pid(args.pid, _options(args, args.libs), args.object, args.libs, args.duration,
                               args.interval, _snapshot_writer(args), builder,
                               after=_finish(args), execs=execs)
        if traced.coverage is None:
            raise BpfcovError("tracing did not start")
        return traced.after


class WatchCommand(Command):
    """Cover every process on this host that runs or maps PATH, now or later (production mode).

    Example: bpfcov watch /usr/local/bin/server --duration 3600 -o out
    """

    name = "watch"

    SERVICE_INTERVAL = 60.0

    def prepare_parser(self, parser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="ELF executables or libraries to watch")
        parser.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
        parser.add_argument("--service", action="store_true",
                            help="run as a service (contrib/bpfcov-watch.service): snapshots and pushes every "
                                 f"--interval (default {self.SERVICE_INTERVAL:g} s), SIGHUP reopens the store, "
                                 "SIGTERM stops")
        add_trace_options(parser)
        add_report_options(parser)
        add_store_options(parser)

    def run(self, args) -> int:
        if args.service and args.interval is None:
            args.interval = self.SERVICE_INTERVAL
        builder = _prepare(args)
        from bpfcov.engine.targets import trace_paths
        # A service is told to reload with SIGHUP, never to stop.
        hangup = (args.pusher.reopen if args.pusher is not None else lambda: None) if args.service else None
        with builder:
            traced = trace_paths(list(args.paths) + list(args.object), _options(args, False), args.duration,
                                 args.interval, _snapshot_writer(args), builder,
                                 after=_finish(args), on_hangup=hangup)
        if traced.coverage is None:
            raise BpfcovError("tracing did not start")
        return traced.after
