"""Debug info and sources by build-id from debuginfod servers, through elfutils' own client.

libdebuginfod (Debian's libdebuginfod1, loaded with ctypes) asks the servers named in
DEBUGINFOD_URLS and honours DEBUGINFOD_TIMEOUT, DEBUGINFOD_CACHE_PATH and its other
variables; its cache is the one gdb and perf share. It reads those variables at every
query, so `--debuginfod URL` is DEBUGINFOD_URLS set for the length of one command
(`servers`), and a command that bpfcov runs gets the user's own value back
(`child_environment`).

What the client (0.188) leaves to its callers, bpfcov does:
- It caches whatever a server sends with status 200. A file is used only when it is a
  complete ELF file with the build-id asked for; anything else is deleted from the cache.
- It records "not found" (believed for cache_miss_s, 10 minutes) after every failure it
  reports as ENOENT: a 404, but also a 500, a transfer cut short, a download cancelled by
  Ctrl-C, or one server's 404 while another was down. bpfcov keeps that record only when
  every server asked answered 404.
The client's own log (its verbose output) says which servers it asked, what curl said of
each transfer, and where the cache is.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bpfcov.errors import BpfcovError
from bpfcov.probes.elf import ElfObject
from bpfcov.progress import Progress

URLS_VARIABLE = "DEBUGINFOD_URLS"
_SCHEMES = ("http://", "https://", "file://")
_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_long)
_BUILD_ID = re.compile(r"[0-9a-f]{2,63}")
_MAX_SOURCE_BYTES = 8 << 20


class DebuginfodError(Exception):
    """Why the servers gave nothing usable, worded to follow "debuginfod: "."""

    def __init__(self, message: str, this_file_only: bool = False):
        super().__init__(message)
        # True when the servers work but lack this file (or it cannot be asked for): asking
        # them for others is still worth it.
        self.this_file_only = this_file_only


def check_url(url: str) -> str:
    """`url` if it names a server the client can ask, else ValueError saying what it needs."""
    if not url.startswith(_SCHEMES) or len(url) <= len(url.split("//", 1)[0]) + 2:
        raise ValueError(f"expected an http://, https:// or file:// URL, got {url!r}")
    return url


# Values of DEBUGINFOD_URLS that `servers` replaced, innermost last (None: it was unset).
_replaced: list[str | None] = []


@contextmanager
def servers(urls: Sequence[str] | None) -> Iterator[None]:
    """Ask these servers (instead of DEBUGINFOD_URLS) until the block ends. The variable is
    the process's: one trace at a time (tracing runs on the main thread anyway)."""
    if not urls:
        yield
        return
    _replaced.append(os.environ.get(URLS_VARIABLE))
    os.environ[URLS_VARIABLE] = " ".join(urls)
    try:
        yield
    finally:
        before = _replaced.pop()
        if before is None:
            os.environ.pop(URLS_VARIABLE, None)
        else:
            os.environ[URLS_VARIABLE] = before


def child_environment() -> dict[str, str]:
    """The environment for a command bpfcov runs: the user's, not what `servers` set."""
    env = dict(os.environ)
    if _replaced:
        if _replaced[0] is None:
            env.pop(URLS_VARIABLE, None)
        else:
            env[URLS_VARIABLE] = _replaced[0]
    return env


def enabled() -> bool:
    return bool(os.environ.get(URLS_VARIABLE, "").strip())


def _servers_named() -> str:
    return ", ".join(os.environ.get(URLS_VARIABLE, "").split()) or "no server"


@functools.cache
def _client_library():
    try:
        lib = ctypes.CDLL("libdebuginfod.so.1")
    except OSError:
        return None
    lib.debuginfod_begin.restype = ctypes.c_void_p
    lib.debuginfod_begin.argtypes = []
    lib.debuginfod_end.argtypes = [ctypes.c_void_p]
    lib.debuginfod_set_verbose_fd.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.debuginfod_set_progressfn.argtypes = [ctypes.c_void_p, _PROGRESS_FN]
    lib.debuginfod_get_url.argtypes = [ctypes.c_void_p]
    lib.debuginfod_get_url.restype = ctypes.c_char_p
    out = ctypes.POINTER(ctypes.c_void_p)
    lib.debuginfod_find_debuginfo.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, out]
    lib.debuginfod_find_source.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, out]
    return lib


_libc_free = ctypes.CDLL(None).free
_libc_free.argtypes = [ctypes.c_void_p]


@dataclass
class _Answer:
    """What one call into the client gave."""

    rc: int                 # a file descriptor, or -errno
    path: str | None        # the cached file, on success
    url: str | None         # where the data came from, once a server started sending
    log: str                # the client's verbose output
    received: int = 0       # bytes, as the progress callback last saw them
    total: int = 0          # bytes announced (0: unknown)

    @property
    def cache_dir(self) -> str | None:
        found = re.search(r"^checking cache dir (.+)$", self.log, re.MULTILINE)
        return found.group(1) if found else None

    @functools.cached_property
    def servers(self) -> dict[int, str]:
        """The servers asked, by the client's number for each ("init server N URL/buildid")."""
        return {int(n): url.removesuffix("/buildid")
                for n, url in re.findall(r"^init server (\d+) (\S+)$", self.log, re.MULTILINE)}

    @property
    def asked_servers(self) -> bool:
        """False when the answer came from the cache alone."""
        return bool(self.servers)

    @functools.cached_property
    def errors(self) -> dict[int, str]:
        """curl's own words for each server's failed transfer ("url N <message>")."""
        return {int(n): message for n, message in re.findall(r"^url (\d+) (.+)$", self.log, re.MULTILINE)
                if "://" not in message}

    @property
    def all_said_not_found(self) -> bool:
        errors = self.errors
        return bool(self.servers) and all("returned error: 404" in errors.get(n, "") for n in self.servers)

    def outcome_by_server(self) -> str:
        """'URL: what went wrong' for each server asked."""
        errors = self.errors
        parts = []
        for n, url in sorted(self.servers.items()):
            error = errors.get(n, "no answer")
            status = re.search(r"returned error: (\d{3})", error)
            parts.append(f"{url} answered HTTP {status.group(1)}" if status else f"{url}: {error}")
        return "; ".join(parts) or _servers_named()

    def cut_short(self) -> bool:
        return (any("partial" in e or "bytes remaining" in e for e in self.errors.values())
                or 0 < self.received < self.total)

    @property
    def remembered_seconds(self) -> int:
        """How long the client believes a 'not found' (its cache's cache_miss_s)."""
        try:
            with open(os.path.join(self.cache_dir or "", "cache_miss_s")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 600


class _Query:
    """One call into the client, with its progress shown, and Ctrl-C or SIGTERM turned
    into a cancel.

    The client calls back about once a second, from C. Python's SIGINT handler would raise
    KeyboardInterrupt inside that callback, where ctypes prints it and carries on, and a
    trace's own handlers would only note the stop while the download went on. So for the
    length of the call those signals, where Python handles them, only set a flag: the
    callback then asks the client to stop, and once the client has returned and the
    handlers are back the signal is raised again, for them.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, lib, progress: Progress | None, what: str):
        self.lib = lib
        self.progress = progress
        self.what = what
        self.received = 0
        self.total = 0
        self.interrupted: list[int] = []

    def _on_progress(self, client, received: int, total: int) -> int:
        if self.interrupted:
            return 1
        if self.progress is None:
            return 0
        if total > 0 or self.lib.debuginfod_get_url(client):  # a server is sending
            self.received, self.total = received, max(total, 0)
            self.progress.transfer(f"downloading {self.what}", received, self.total)
        else:
            self.progress.update(f"asking debuginfod ({_servers_named()}) for {self.what}")
        return 0

    def _on_signal(self, signum, _frame) -> None:
        if signum not in self.interrupted:
            self.interrupted.append(signum)

    def ask(self, build_id: str, source: str | None) -> _Answer:
        taken = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                handler = signal.getsignal(signum)
                if callable(handler):  # not SIG_DFL, SIG_IGN, or a handler set from C (None)
                    taken[signum] = signal.signal(signum, self._on_signal)
        try:
            return self._ask(build_id, source)
        finally:
            for signum, handler in taken.items():
                signal.signal(signum, handler)

    def pass_signals_on(self) -> None:
        """Raise each signal that cancelled the call again, for the handler it was meant
        for: Python's SIGINT handler raises KeyboardInterrupt; a trace's handlers stop it."""
        for signum in self.interrupted:
            signal.raise_signal(signum)

    def _ask(self, build_id: str, source: str | None) -> _Answer:
        try:
            log_fd = os.memfd_create("debuginfod-log", os.MFD_CLOEXEC)
        except OSError as e:
            raise DebuginfodError(f"cannot keep the client's log ({e.strerror})") from None
        client = self.lib.debuginfod_begin()
        if not client:
            os.close(log_fd)
            raise DebuginfodError("the client library could not start")
        callback = _PROGRESS_FN(self._on_progress)  # kept alive until the client ends
        out = ctypes.c_void_p()
        url = None
        try:
            self.lib.debuginfod_set_verbose_fd(client, log_fd)
            self.lib.debuginfod_set_progressfn(client, callback)
            if source is None:
                rc = self.lib.debuginfod_find_debuginfo(client, build_id.encode(), 0, ctypes.byref(out))
            else:
                rc = self.lib.debuginfod_find_source(client, build_id.encode(), 0, os.fsencode(source),
                                                     ctypes.byref(out))
            raw_url = self.lib.debuginfod_get_url(client)
            url = raw_url.decode("utf-8", "replace") if raw_url else None
        finally:
            self.lib.debuginfod_end(client)
        path = None
        if rc >= 0:
            os.close(rc)  # bpfcov opens the file by path; this descriptor's offset may be at its end
            if out.value:
                path = os.fsdecode(ctypes.string_at(out.value))
                _libc_free(out.value)
        os.lseek(log_fd, 0, os.SEEK_SET)
        with os.fdopen(log_fd, "rb") as f:
            log = f.read().decode("utf-8", "replace")
        return _Answer(rc, path, url, log, self.received, self.total)


def _cache_entry(cache_dir: str | None, build_id: str, source: str | None) -> str | None:
    """Where the client keeps this answer: <cache>/<build-id>/debuginfo, or source<path>
    with '/' written '##' and '#' written '#_'."""
    if cache_dir is None:
        return None
    if source is None:
        return os.path.join(cache_dir, build_id, "debuginfo")
    escaped = "".join("##" if c == "/" else "#_" if c == "#" else c for c in source)
    return os.path.join(cache_dir, build_id, "source" + escaped)


def _remove(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _why_not_found(answer: _Answer) -> str:
    """Words for an ENOENT from servers that were asked."""
    if answer.cut_short():
        total = f"{answer.total:,}" if answer.total else "an unknown number of"
        source = answer.url or _servers_named()
        return f"the download from {source} was cut short ({answer.received:,} of {total} bytes)"
    if answer.all_said_not_found:
        return f"not on {_servers_named()} (HTTP 404)"
    return answer.outcome_by_server()


def _why_failed(answer: _Answer) -> str:
    code = -answer.rc
    if code in (errno.ETIME, errno.ETIMEDOUT):
        if "max time" in answer.log:
            return f"{_servers_named()} took longer than DEBUGINFOD_MAXTIME ({os.environ.get('DEBUGINFOD_MAXTIME')} s)"
        timeout = os.environ.get("DEBUGINFOD_TIMEOUT") or "90"
        # The client's DEBUGINFOD_TIMEOUT is curl's low-speed limit, and it tries again twice.
        return f"{_servers_named()} sent less than 100 KiB/s for DEBUGINFOD_TIMEOUT ({timeout} s), on every try"
    if code == errno.EFBIG:
        return "the file is larger than DEBUGINFOD_MAXSIZE allows"
    if code == errno.ENOSYS:
        return "no server is named (DEBUGINFOD_URLS is empty)"
    if answer.errors:  # refused, unreachable, reset: curl says which, for each server
        return answer.outcome_by_server()
    return f"{_servers_named()}: {os.strerror(code)}"


def _problem_with_debuginfo(path: str, build_id: str) -> str | None:
    """What is wrong with a file that arrived as the debug info of `build_id`, if anything."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        return f"a file that cannot be read ({e.strerror})"
    if magic != b"\x7fELF":
        return f"something that is not an ELF file ({size:,} bytes)"
    try:
        with ElfObject(path) as obj:
            declared = obj.declared_size()
            found = obj.build_id()
            if declared > size:
                return f"a truncated file ({size:,} bytes; its headers say {declared:,})"
            if found == build_id and not obj.has_symtab() and not obj.has_dwarf():
                return "a file with neither symbols nor DWARF (the program itself, not its debug info?)"
    except BpfcovError as e:
        why = str(e).removeprefix(path + ": ")
        return f"a {why}" if why.startswith("truncated") else f"an unusable ELF file ({why})"
    except Exception as e:  # the file is untrusted: whatever it makes the reader raise is its fault
        return f"a malformed ELF file ({type(e).__name__})"
    if found != build_id:
        return f"the debug info of {'build-id ' + found if found else 'a file without a build-id'}"
    return None


def _fetch(build_id: str, source: str | None, progress: Progress | None) -> str:
    lib = _client_library()
    if lib is None:
        raise DebuginfodError("the client library libdebuginfod.so.1 (Debian's libdebuginfod1) is not installed")
    if not _BUILD_ID.fullmatch(build_id):
        raise DebuginfodError(f"{build_id!r} is not a build-id it can ask for")
    for _attempt in range(2):
        query = _Query(lib, progress, "debug info" if source is None else "source")
        answer = query.ask(build_id, source)
        entry = _cache_entry(answer.cache_dir, build_id, source)
        if query.interrupted:
            if answer.rc < 0 and answer.asked_servers:
                _remove(entry)  # the client records a cancelled download as "not found"
            query.pass_signals_on()
            if answer.rc < 0:
                raise DebuginfodError("the download was interrupted")
        if answer.rc >= 0 and answer.path is not None:
            problem = _problem_with_debuginfo(answer.path, build_id) if source is None else None
            if problem is None:
                return answer.path
            _remove(answer.path)
            if not answer.asked_servers:
                continue  # a bad file that some program left in the cache: ask the servers now
            raise DebuginfodError(f"{answer.url or _servers_named()} sent {problem}; removed it from the cache")
        if answer.rc == -errno.ENOENT:
            if not answer.asked_servers:
                minutes = max(1, answer.remembered_seconds // 60)
                raise DebuginfodError(f"no server had it when last asked (the client believes that for {minutes} "
                                      f"minutes; delete {entry} to ask again)", this_file_only=True)
            if not answer.all_said_not_found:
                _remove(entry)  # "not found" is not what happened: ask again next time
            raise DebuginfodError(_why_not_found(answer), this_file_only=answer.all_said_not_found)
        raise DebuginfodError(_why_failed(answer))
    raise DebuginfodError(f"{_servers_named()} sent a bad file twice")


def fetch_debuginfo(build_id: str, progress: Progress | None = None) -> str:
    """Path of the verified debug file of `build_id`, from the cache or a server; raises
    DebuginfodError saying why there is none."""
    return _fetch(build_id, None, progress)


def fetch_source(build_id: str, path: str) -> list[str]:
    """The lines of source file `path` (as DWARF names it) of the build `build_id`."""
    if not os.path.isabs(path):
        raise DebuginfodError(f"{path} is not an absolute path, which it needs to be asked for", this_file_only=True)
    cached = _fetch(build_id, path, None)
    try:
        if os.path.getsize(cached) > _MAX_SOURCE_BYTES:
            raise DebuginfodError(f"the server's copy of {path} is larger than {_MAX_SOURCE_BYTES >> 20} MB",
                                  this_file_only=True)
        with open(cached, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        raise DebuginfodError(f"cannot read the fetched copy of {path}: {e.strerror}", this_file_only=True) from None
