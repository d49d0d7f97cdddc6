"""The three ways to choose what is traced, and when tracing ends.

- trace_command: `bpfcov run -- CMD`: the command and every process it forks or execs,
  from its first instruction. The command starts in a cgroup of its own, where its exec
  stops it until its links are in place; its children are caught as they are forked, and
  every program they exec is probed as the exec policy says (execs.py) before it runs.
- trace_pid: `bpfcov attach --pid PID`: one live process from now on, and the children it
  forks (and the programs they exec) from now on.
- trace_paths: `bpfcov watch PATH…`: every process on the host that maps the objects.

Links carry the pid of each traced process, so no other process on the host traps on a
probe of bpfcov's; only `watch` puts its probes into every process, by design.

Each returns the session's final coverage, and what `after(coverage)` returned: the
caller's work (writing reports) that runs while the links close. Whatever happens, every
kernel object is released before these return or raise.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bpfcov.data.model import RunCoverage
from bpfcov.engine.cgroup import RunCgroup
from bpfcov.engine.execs import ExecPolicy
from bpfcov.engine.processes import executable_of, linked_libraries, process_exists
from bpfcov.engine.program import program_options, spare_slots
from bpfcov.engine.session import Session, TraceOptions
from bpfcov.errors import BpfcovError
from bpfcov.probes.debuginfod import child_environment
from bpfcov.probes.elf import ElfObject

POLL_SECONDS = 0.05


@dataclass
class Ending:
    """How the traced program ended (for `run`)."""

    exit_status: int | None = None  # its exit status, when it exited
    signal: int | None = None       # the signal that killed it, when one did


@dataclass
class Traced:
    coverage: RunCoverage | None  # None when tracing never started
    ending: Ending | None = None  # for `run`
    after: Any = None             # what `after(coverage)` returned


class Stopper:
    """Turns SIGINT, SIGTERM and SIGHUP into a request to stop, so that coverage is saved.

    `forward` (for `run`) passes each signal on to the traced command; then bpfcov keeps
    waiting for the command to end, and only a second signal makes it stop waiting. When
    there is no command to pass it to (yet), `forward` returns False and bpfcov stops.
    `hangup` (for `watch --service`) makes SIGHUP a request to reopen the store instead,
    as services are told to reload. Install it before attaching: a signal must never find
    bpfcov with its probes attached and without this handler.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, event: threading.Event, forward: Callable[[int], bool] | None = None,
                 hangup: Callable[[], None] | None = None):
        self.event = event  # set on every signal, so that a waiting loop wakes at once
        self._stop = False
        self.received: list[int] = []
        self._forward = forward
        self._hangup = hangup
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGHUP and self._hangup is not None:
            self._hangup()
            return
        self.received.append(signum)
        if self._forward is None or len(self.received) > 1 or not self._forward(signum):
            self._stop = True
        self.event.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop


def _wait_loop(session: Session, stopper: Stopper, alive: Callable[[], bool], duration: float | None,
               interval: float | None, on_snapshot: Callable[[RunCoverage], None] | None) -> None:
    start = time.monotonic()
    next_snapshot = start + interval if interval else None
    while alive() and not stopper.stop_requested:
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            break
        session.service()
        if next_snapshot is not None and now >= next_snapshot and on_snapshot is not None:
            on_snapshot(session.snapshot())
            next_snapshot = now + (interval or 0.0)
        session.wake.wait(POLL_SECONDS)
        session.wake.clear()


def _check_elf(path: str) -> None:
    with ElfObject(path):
        pass


def resolve_command(command: list[str]) -> str:
    if not command:
        raise BpfcovError("no command given: use bpfcov run [options] -- COMMAND [ARGS...]")
    program = command[0]
    path = program if "/" in program else shutil.which(program)
    if path is None or not os.path.exists(path):
        raise BpfcovError(f"{program}: command not found")
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise BpfcovError(f"{program}: not an executable file")
    return os.path.realpath(path)


def _is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def trace_command(command: list[str], options: TraceOptions, objects: list[str], libs: bool,
                  duration: float | None = None, interval: float | None = None,
                  on_snapshot=None, builder=None, after=None, execs: ExecPolicy | None = None) -> Traced:
    """`execs`: which programs the command's processes exec are probed (default: those
    under the current folder)."""
    executable = resolve_command(command)
    execs = execs or ExecPolicy.from_options()
    is_elf = _is_elf(executable)
    for path in [executable] * is_elf + objects:
        _check_elf(path)
    # The command is a subject when the user named it by its path or the policy takes it;
    # else (make, sh, a pyenv shim) it is a launcher, and the programs it runs are.
    named = "/" in command[0]
    subject = is_elf and (named or execs.reason_to_skip(executable) is None)
    options.spare_slots = spare_slots(options.lines, objects_may_appear=True)
    cgroup = RunCgroup()
    ending = Ending()
    proc = None

    def forward(signum: int) -> bool:
        if proc is None or proc.poll() is not None:
            return False
        try:
            proc.send_signal(signum)
        except OSError:
            return False
        return True

    procs_file = cgroup.procs_file

    with Session(options, command, program_options("run", options.mode, libs, objects, options.attach_method),
                 libs=libs, cgroup_id=cgroup.id, builder=builder, execs=execs) as session:

        def enter_cgroup() -> None:  # runs in the child between fork and exec
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))
            if session.fd_limit_before is not None:
                # bpfcov raised its own open-file limit for its links: the command gets the
                # limit it would have had (some programs close every possible descriptor).
                resource.setrlimit(resource.RLIMIT_NOFILE, session.fd_limit_before)

        try:
            with Stopper(session.wake, forward) as stopper:
                if subject:
                    session.add_object(executable, required=False)
                for path in objects:
                    session.add_object(path)
                if libs and is_elf:
                    # Indexed now, so that attaching when the command maps them is quick.
                    for path in filter(session.wants_library, linked_libraries(executable)):
                        session.add_object(path, required=False)
                session.start()
                session.announce()  # the command's links are made at its exec, before it runs
                if not stopper.stop_requested:  # else interrupted before the command started
                    try:
                        # The command stops at its exec (counter.c), where it is given its links.
                        # The user's environment: --debuginfod set DEBUGINFOD_URLS for bpfcov alone.
                        proc = subprocess.Popen(command, executable=executable if is_elf else None,
                                                preexec_fn=enter_cgroup, env=child_environment())
                    except OSError as e:
                        raise BpfcovError(f"cannot start {command[0]}: {e.strerror}") from None
                    _wait_loop(session, stopper, lambda: proc.poll() is None, duration, interval, on_snapshot)
            code = proc.poll() if proc is not None else None
            if code is not None:
                if code < 0:
                    ending.signal = -code
                else:
                    ending.exit_status = code
        finally:
            cgroup.remove()
            run = session.finish()
        return Traced(run, ending, _after(run, after))


def _after(run: RunCoverage | None, after: Callable[[RunCoverage], Any] | None) -> Any:
    """The caller's work on the coverage (reports), done while the links close."""
    return after(run) if after is not None and run is not None else None


def trace_pid(pid: int, options: TraceOptions, objects: list[str], libs: bool,
              duration: float | None = None, interval: float | None = None,
              on_snapshot=None, builder=None, after=None, execs: ExecPolicy | None = None) -> Traced:
    if pid <= 0 or not process_exists(pid):
        raise BpfcovError(f"no process with pid {pid}")
    executable = executable_of(pid)  # as the process sees it, in its own mount namespace
    for path in objects:
        _check_elf(path)
    options.spare_slots = spare_slots(options.lines, objects_may_appear=True)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise BpfcovError(f"process {pid} exited before bpfcov could attach") from None

    def alive() -> bool:
        return not select.select([pidfd], [], [], 0)[0]

    wanted = program_options("attach", options.mode, libs, objects, options.attach_method)
    with Session(options, [f"pid {pid}", executable], wanted,
                 libs=libs, builder=builder, execs=execs or ExecPolicy.from_options()) as session:
        try:
            with Stopper(session.wake) as stopper:
                # /proc/PID/exe opens the very file, from any mount namespace. A process
                # with no symbols is a launcher: what it maps (--libs) and runs is covered.
                session.add_object(f"/proc/{pid}/exe", required=False, name=executable)
                for path in objects:
                    session.add_object(path)
                session.start()
                if not session.cover_process(pid):
                    raise BpfcovError(f"process {pid} exited during attach")
                session.announce()
                _wait_loop(session, stopper, alive, duration, interval, on_snapshot)
        finally:
            os.close(pidfd)
            run = session.finish()
        return Traced(run, None, _after(run, after))


def trace_paths(paths: list[str], options: TraceOptions, duration: float | None = None,
                interval: float | None = None, on_snapshot=None, builder=None, after=None,
                on_hangup: Callable[[], None] | None = None) -> Traced:
    if not paths:
        raise BpfcovError("watch needs at least one PATH to an ELF object")
    for path in paths:
        _check_elf(path)
    wanted = program_options("watch", options.mode, attach_method=options.attach_method)
    with Session(options, ["watch"] + [os.path.realpath(p) for p in paths], wanted,
                 every_process=True, builder=builder) as session:
        try:
            with Stopper(session.wake, hangup=on_hangup) as stopper:
                for path in paths:
                    session.add_object(path)
                session.start()
                session.announce()
                _wait_loop(session, stopper, lambda: True, duration, interval, on_snapshot)
        finally:
            run = session.finish()
        return Traced(run, None, _after(run, after))
