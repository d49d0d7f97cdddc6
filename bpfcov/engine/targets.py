"""The three ways to choose what is traced, and when tracing ends.

- trace_command: `bpfcov run -- CMD`: the command and every process it forks or execs,
  from its first instruction. The command runs in a cgroup of its own and the BPF program
  counts only that cgroup; probes are in place before the command is started.
- trace_pid: `bpfcov attach --pid PID`: one live process (the probes' pid filter).
- trace_paths: `bpfcov watch PATH…`: every process on the host that maps the objects.

Each returns the session's final coverage; the caller writes it. Whatever happens, the
session is finished before these return or raise: tracing has stopped and its links are
closing (Session.finish; wait_for_release waits for them).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from bpfcov.data.model import RunCoverage
from bpfcov.engine.cgroup import RunCgroup
from bpfcov.engine.program import spare_slots
from bpfcov.engine.processes import executable_of, linked_libraries, mapped_objects, process_exists
from bpfcov.engine.session import Session, TraceOptions
from bpfcov.errors import BpfcovError
from bpfcov.probes.elf import ElfObject

POLL_SECONDS = 0.05


@dataclass
class Ending:
    """How the traced program ended (for `run`)."""

    exit_status: int | None = None  # its exit status, when it exited
    signal: int | None = None       # the signal that killed it, when one did


class Stopper:
    """Turns SIGINT, SIGTERM and SIGHUP into a request to stop, so that coverage is saved.

    `forward` (for `run`) passes each signal on to the traced command; then bpfcov keeps
    waiting for the command to end, and only a second signal makes it stop waiting. When
    there is no command to pass it to (yet), `forward` returns False and bpfcov stops.
    Install it before attaching: a signal must never find bpfcov with its probes attached
    and without this handler.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, event: threading.Event, forward: Callable[[int], bool] | None = None):
        self.event = event  # set on every signal, so that a waiting loop wakes at once
        self._stop = False
        self.received: list[int] = []
        self._forward = forward
        self._previous = {}

    def __enter__(self) -> Stopper:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if self._forward is None or len(self.received) > 1 or not self._forward(signum):
            self._stop = True
        self.event.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop


def _wait_loop(session: Session, stopper: Stopper, alive: Callable[[], bool], duration: float | None,
               interval: float | None, on_snapshot: Callable[[RunCoverage], None] | None,
               discover: Callable[[], list[str]] | None) -> None:
    start = time.monotonic()
    next_snapshot = start + interval if interval else None
    while alive() and not stopper.stop_requested:
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            break
        if discover is not None:
            stopped = session.take_stopped()
            try:
                for path in discover():
                    session.add_object(path, required=False)
            finally:
                session.resume(stopped)
        if next_snapshot is not None and now >= next_snapshot and on_snapshot is not None:
            on_snapshot(session.snapshot())
            next_snapshot = now + interval
        session.wake.wait(POLL_SECONDS)
        session.wake.clear()


def interpreter_of(executable: str) -> str | None:
    """The dynamic loader named in PT_INTERP, if any."""
    with ElfObject(executable) as obj:
        for segment in obj.elf.iter_segments():
            if segment.header.p_type == "PT_INTERP":
                path = segment.get_interp_name()
                return path if os.path.exists(path) else None
    return None


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


def trace_command(command: list[str], options: TraceOptions, objects: list[str], libs: bool,
                  duration: float | None = None, interval: float | None = None,
                  on_snapshot=None, builder=None) -> tuple[RunCoverage | None, Ending]:
    executable = resolve_command(command)
    targets = list(objects)
    with open(executable, "rb") as f:
        is_elf = f.read(4) == b"\x7fELF"
    if is_elf:
        targets.insert(0, executable)
    elif not objects:
        raise BpfcovError(f"{command[0]} is not an ELF executable (a script?); name the binary to "
                          "trace with --object PATH")
    for path in targets:
        _check_elf(path)
    options.spare_slots = spare_slots(options.lines, libs)
    cgroup = RunCgroup()
    loader = interpreter_of(executable) if libs and is_elf else None
    session = Session(options, command, pid_filter=0, cgroup_id=cgroup.id, loader=loader, builder=builder)
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

    def discover() -> list[str]:
        found = []
        for pid in cgroup.pids():
            found.extend(p for p in mapped_objects(pid) if p not in found)
        return found

    procs_file = cgroup.procs_file

    def enter_cgroup() -> None:  # runs in the child between fork and exec
        with open(procs_file, "w") as f:
            f.write(str(os.getpid()))

    try:
        with Stopper(session.wake, forward) as stopper:
            for path in targets:
                # With --object, the command may be a mere launcher (a shell, a stripped tool).
                session.add_object(path, required=not (objects and path == executable))
            if libs and is_elf:
                for path in linked_libraries(executable):
                    session.add_object(path, required=False)
            session.start()
            if not stopper.stop_requested:  # else interrupted before the command started
                try:
                    proc = subprocess.Popen(command, executable=executable if is_elf else None,
                                            preexec_fn=enter_cgroup)
                except OSError as e:
                    raise BpfcovError(f"cannot start {command[0]}: {e.strerror}") from None
                _wait_loop(session, stopper, lambda: proc.poll() is None, duration, interval, on_snapshot,
                           discover if libs else None)
        code = proc.poll() if proc is not None else None
        if code is not None:
            if code < 0:
                ending.signal = -code
            else:
                ending.exit_status = code
    finally:
        run = session.finish()
        cgroup.remove()
    return run, ending


def trace_pid(pid: int, options: TraceOptions, objects: list[str], libs: bool,
              duration: float | None = None, interval: float | None = None,
              on_snapshot=None, builder=None) -> RunCoverage | None:
    if pid <= 0 or not process_exists(pid):
        raise BpfcovError(f"no process with pid {pid}")
    executable = executable_of(pid)
    targets = [executable] + list(objects)
    for path in targets:
        _check_elf(path)
    options.spare_slots = spare_slots(options.lines, libs)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise BpfcovError(f"process {pid} exited before bpfcov could attach") from None
    loader = next((p for p in mapped_objects(pid) if os.path.basename(p).startswith("ld-")), None) if libs else None
    session = Session(options, [f"pid {pid}", executable], pid_filter=pid, loader=loader, builder=builder)
    def alive() -> bool:
        return not select.select([pidfd], [], [], 0)[0]

    try:
        with Stopper(session.wake) as stopper:
            for path in targets:
                session.add_object(path)
            if libs:
                for path in mapped_objects(pid):
                    session.add_object(path, required=False)
            session.start()
            if not process_exists(pid):
                raise BpfcovError(f"process {pid} exited during attach")
            _wait_loop(session, stopper, alive, duration, interval, on_snapshot,
                       (lambda: mapped_objects(pid)) if libs else None)
    finally:
        os.close(pidfd)
        run = session.finish()
    return run


def trace_paths(paths: list[str], options: TraceOptions, duration: float | None = None,
                interval: float | None = None, on_snapshot=None, builder=None) -> RunCoverage | None:
    if not paths:
        raise BpfcovError("watch needs at least one PATH to an ELF object")
    for path in paths:
        _check_elf(path)
    session = Session(options, ["watch"] + [os.path.realpath(p) for p in paths], pid_filter=0, builder=builder)
    try:
        with Stopper(session.wake) as stopper:
            for path in paths:
                session.add_object(path)
            session.start()
            _wait_loop(session, stopper, lambda: True, duration, interval, on_snapshot, None)
    finally:
        run = session.finish()
    return run
