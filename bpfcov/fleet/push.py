"""Pushing a host's counts into the store, each counted exactly once, whatever fails.

A push carries a run's totals so far, not a difference: the store keeps each run's
totals (run_functions, run_lines) and adds to the fleet's counts only what a push has
beyond them. So a push applied twice, or a stale one arriving after a newer one, adds
nothing, and a retry after any failure may simply send the newest totals. Each push is
applied in one transaction that first inserts its key (host, run id, sequence number)
into `pushes`, a unique key: a push killed halfway (SIGKILL, a dropped connection)
commits nothing, and one that did commit is never applied again.

The host's own data file is the spool. Every snapshot is written there, stamped with its
run id and sequence number, before its push is queued; so when bpfcov is killed, or the
server is still down when it ends, `bpfcov store push OUT/bpfcov.db URL` sends the file's
totals later, and the store then holds exactly what the file does.

Only rows that changed since the last acknowledged push are sent (their values are
totals, so a row the server already has is harmless): a hit-mode run sends little after
its first minutes.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from bpfcov.data import store as datafile
from bpfcov.data.merge import merge_objects, object_key
from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.fleet import schema
from bpfcov.fleet.connection import StoreURL, connect, errors_in_one_line, one_line, redacted


@dataclass(frozen=True)
class PushKey:
    host: str
    run_id: str
    seq: int


def stamp(run: RunCoverage, key: PushKey) -> None:
    """Mark a data file's run as the totals of push `key` (see `key_of`)."""
    run.stats["fleet"] = {"host": key.host, "run_id": key.run_id, "seq": key.seq}


def key_of(run: RunCoverage) -> PushKey | None:
    mark = run.stats.get("fleet")
    if not isinstance(mark, dict):
        return None
    return PushKey(str(mark["host"]), str(mark["run_id"]), int(mark["seq"]))


@dataclass
class Push:
    key: PushKey
    pushed_at: float             # Unix time the totals were taken
    totals: list[ObjectCoverage]  # one per build (merge_objects), the run's counts so far
    run: RunCoverage             # for its mode, start time, kernel
    ended: bool = False          # the run's last push: the store may drop its totals after


def totals_of(run: RunCoverage) -> list[ObjectCoverage]:
    return merge_objects(run.objects, run.lines)


# --- applying a push on the server -------------------------------------------------------

def apply(conn, push: Push, known: dict[str, ObjectCoverage] | None = None,
          stored: set[tuple[str, bool]] | None = None) -> bool:
    """Apply `push` in one transaction: True if it was news, False if the store had it
    (or a newer push of its run). `known`: per build, totals the store is known to hold
    (the last acknowledged push), so unchanged rows need not be sent. `stored`: the
    builds whose index the server holds, so each is sent once."""
    key, at = push.key, _timestamp(push.pushed_at)
    storing: set[tuple[str, bool]] = set()  # builds this push stores: known stored once it commits
    with conn.transaction(), conn.cursor() as cur:
        schema.check_within(cur)
        cur.execute("INSERT INTO pushes (host, run_id, seq, pushed_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING RETURNING seq", (key.host, key.run_id, key.seq, at))
        if cur.fetchone() is None:
            return False
        cur.execute("INSERT INTO runs (host, run_id, last_seq, ended) VALUES (%s, %s, 0, false) "
                    "ON CONFLICT DO NOTHING", (key.host, key.run_id))
        cur.execute("SELECT last_seq, ended FROM runs WHERE host = %s AND run_id = %s FOR UPDATE",
                    (key.host, key.run_id))
        last_seq, ended = cur.fetchone()
        if ended or last_seq >= key.seq:
            return False  # a stale push: the store holds newer totals of this run
        for obj in push.totals:
            build = object_key(obj)
            if (build, obj.line_counts is not None) not in (stored or set()):
                _store_build(cur, build, obj, push)
                storing.add((build, obj.line_counts is not None))
            cur.execute("INSERT INTO watches (build_key, host, run_id, mode, started, last_seen) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (build_key, host, run_id) "
                        "DO UPDATE SET last_seen = GREATEST(watches.last_seen, EXCLUDED.last_seen)",
                        (build, key.host, key.run_id, push.run.mode, _timestamp(push.run.started), at))
            before = (known or {}).get(build)
            _add_functions(cur, build, key, at, obj, before, push.run.started)
            _add_lines(cur, build, key, at, obj, before)
        cur.execute("UPDATE runs SET last_seq = %s, ended = %s WHERE host = %s AND run_id = %s",
                    (key.seq, push.ended, key.host, key.run_id))
        if push.ended:  # nothing can add to an ended run: its totals are no longer needed
            cur.execute("DELETE FROM run_functions WHERE host = %s AND run_id = %s", (key.host, key.run_id))
            cur.execute("DELETE FROM run_lines WHERE host = %s AND run_id = %s", (key.host, key.run_id))
    if stored is not None:
        stored |= storing
    return True


def _timestamp(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


def _store_build(cur, build: str, obj: ObjectCoverage, push: Push) -> None:
    has_lines = obj.line_counts is not None
    cur.execute("SELECT has_lines FROM builds WHERE build_key = %s", (build,))
    row = cur.fetchone()
    if row is None or (has_lines and not row[0]):
        # Two hosts may race to store a build: the first one's stays, unless only the second has lines.
        cur.execute("INSERT INTO builds (build_key, build_id, path, has_lines, index_data, stored_by) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (build_key) DO UPDATE "
                    "SET index_data = EXCLUDED.index_data, has_lines = true, stored_by = EXCLUDED.stored_by "
                    "WHERE NOT builds.has_lines AND EXCLUDED.has_lines",
                    (build, obj.index.build_id, obj.index.path, has_lines, index_bytes(obj, push.run),
                     push.key.host))


def index_bytes(obj: ObjectCoverage, run: RunCoverage) -> bytes:
    """A build's static index as the bytes of a data file whose counts are all zero."""
    n = len(obj.index.functions)
    zeros = np.zeros(n, dtype=np.int64)
    lines = None if obj.line_counts is None else np.zeros(len(obj.line_counts), dtype=np.int64)
    static = RunCoverage(mode=run.mode, command=[], started=run.started, ended=None, host="", kernel=run.kernel,
                         lines=lines is not None, objects=[ObjectCoverage(obj.index, zeros, lines, zeros, zeros)],
                         bpfcov_version=run.bpfcov_version)
    with tempfile.TemporaryDirectory(prefix="bpfcov-index-") as folder:
        path = os.path.join(folder, "index.db")
        datafile.write(path, static)
        with open(path, "rb") as f:
            return f.read()


def _changed(values: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """Positions worth sending: non-zero, and not what the store already holds."""
    values = np.asarray(values, dtype=np.int64)
    if before is None or len(before) != len(values):
        return np.flatnonzero(values)
    return np.flatnonzero((values != 0) & (values != before))


def _add_functions(cur, build: str, key: PushKey, at, obj: ObjectCoverage, before: ObjectCoverage | None,
                   started: float) -> None:
    counts, inlined, first = obj.function_counts, obj.inlined(), obj.first_hit_ns()
    same_index = before is not None and before.index.functions == obj.index.functions
    rows = np.union1d(_changed(counts, before.function_counts if same_index else None),  # type: ignore[union-attr]
                      _changed(inlined, before.inlined() if same_index else None))  # type: ignore[union-attr]
    if not len(rows):
        return
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS pushed_functions (name text PRIMARY KEY, count bigint, "
                "inlined bigint, first_executed timestamptz) ON COMMIT DELETE ROWS")
    # merge_objects made one object per build, but aliases can share a name across copies.
    with cur.copy("COPY pushed_functions FROM STDIN") as copy:
        seen = set()
        for i in rows.tolist():
            name = obj.index.functions[i].name
            if name in seen:
                continue
            seen.add(name)
            # When it first ran, if hit mode saw that; else this push bounds it.
            first_at = _timestamp(started + first[i] / 1e9) if first[i] else at
            copy.write_row((name, int(counts[i]), int(inlined[i]), first_at))
    cur.execute(
        "INSERT INTO function_counts (build_key, host, day, name, count, inlined, first_executed, last_executed) "
        "SELECT %(build)s, %(host)s, %(day)s, p.name, GREATEST(p.count - COALESCE(r.count, 0), 0), "
        "GREATEST(p.inlined - COALESCE(r.inlined, 0), 0), p.first_executed, %(at)s "
        "FROM pushed_functions p LEFT JOIN run_functions r "
        "ON r.host = %(host)s AND r.run_id = %(run)s AND r.build_key = %(build)s AND r.name = p.name "
        "WHERE p.count > COALESCE(r.count, 0) OR p.inlined > COALESCE(r.inlined, 0) "
        "ON CONFLICT (build_key, day, host, name) DO UPDATE SET count = function_counts.count + EXCLUDED.count, "
        "inlined = function_counts.inlined + EXCLUDED.inlined, "
        "first_executed = LEAST(function_counts.first_executed, EXCLUDED.first_executed), "
        "last_executed = GREATEST(function_counts.last_executed, EXCLUDED.last_executed)",
        {"build": build, "host": key.host, "day": at.date(), "at": at, "run": key.run_id})
    cur.execute(
        "INSERT INTO run_functions (host, run_id, build_key, name, count, inlined) "
        "SELECT %(host)s, %(run)s, %(build)s, name, count, inlined FROM pushed_functions "
        "ON CONFLICT (host, run_id, build_key, name) DO UPDATE "
        "SET count = GREATEST(run_functions.count, EXCLUDED.count), "
        "inlined = GREATEST(run_functions.inlined, EXCLUDED.inlined)",
        {"build": build, "host": key.host, "run": key.run_id})


def _add_lines(cur, build: str, key: PushKey, at, obj: ObjectCoverage, before: ObjectCoverage | None) -> None:
    if obj.line_counts is None or obj.index.lines is None:
        return
    same_lines = (before is not None and before.index.lines is not None and before.line_counts is not None
                  and np.array_equal(before.index.lines.address, obj.index.lines.address))
    rows = _changed(obj.line_counts, before.line_counts if same_lines else None)  # type: ignore[union-attr]
    if not len(rows):
        return
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS pushed_lines (address bigint PRIMARY KEY, count bigint) "
                "ON COMMIT DELETE ROWS")
    with cur.copy("COPY pushed_lines FROM STDIN") as copy:
        for address, count in zip(obj.index.lines.address[rows].tolist(), obj.line_counts[rows].tolist()):
            copy.write_row((address, count))
    cur.execute(
        "INSERT INTO line_counts (build_key, host, day, address, count) "
        "SELECT %(build)s, %(host)s, %(day)s, p.address, p.count - COALESCE(r.count, 0) "
        "FROM pushed_lines p LEFT JOIN run_lines r "
        "ON r.host = %(host)s AND r.run_id = %(run)s AND r.build_key = %(build)s AND r.address = p.address "
        "WHERE p.count > COALESCE(r.count, 0) "
        "ON CONFLICT (build_key, day, host, address) DO UPDATE SET count = line_counts.count + EXCLUDED.count",
        {"build": build, "host": key.host, "day": at.date(), "run": key.run_id})
    cur.execute(
        "INSERT INTO run_lines (host, run_id, build_key, address, count) "
        "SELECT %(host)s, %(run)s, %(build)s, address, count FROM pushed_lines "
        "ON CONFLICT (host, run_id, build_key, address) DO UPDATE "
        "SET count = GREATEST(run_lines.count, EXCLUDED.count)",
        {"build": build, "host": key.host, "run": key.run_id})


def push_file(url: StoreURL, run: RunCoverage, host: str | None) -> bool:
    """Send a data file's totals (`bpfcov store push`): the rest of a run that was killed
    or outlived the server, or any older file, as a run of its own. True if news."""
    key = key_of(run)
    if key is None:
        key = PushKey(host or run.host, str(uuid.uuid4()), 0)
    # One past the file's own stamp: the run never sent a higher one (the file is written first).
    push = Push(PushKey(key.host, key.run_id, key.seq + 1), run.ended or time.time(), totals_of(run), run,
                ended=True)
    with schema.opened(url) as conn:
        return apply(conn, push)


# --- delivering pushes while tracing goes on ---------------------------------------------

class Pusher:
    """Delivers a run's pushes from a thread of its own, retrying with backoff while the
    server is down or slow; tracing and local snapshots never wait for it. Memory stays
    bounded: only the newest totals wait, as each push supersedes the ones before."""

    BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0

    def __init__(self, url: StoreURL, host: str, quiet: bool = False) -> None:
        self.url, self.host, self.quiet = url, host, quiet
        self.run_id = str(uuid.uuid4())
        self._seq = 0
        self._waiting: Push | None = None     # the newest totals, not yet acknowledged
        self._acknowledged: dict[str, ObjectCoverage] = {}
        self._wake = threading.Condition()
        self._closing = False
        self._conn = None
        self._stored: set[tuple[str, bool]] = set()
        self._last_error = ""
        self._reopen = False
        self._thread = threading.Thread(target=self._deliver, name="bpfcov-push", daemon=True)

    def check(self) -> None:
        """Before anything is attached: the server answers, we may log in, the schema fits."""
        with schema.opened(self.url):
            pass

    def start(self) -> None:
        self._thread.start()

    def stamp(self, run: RunCoverage) -> PushKey:
        """Give `run`'s totals the next sequence number, before its data file is written."""
        self._seq += 1
        key = PushKey(self.host, self.run_id, self._seq)
        stamp(run, key)
        return key

    def push(self, run: RunCoverage, key: PushKey, ended: bool = False) -> None:
        """Queue `run`'s totals (stamped `key`), superseding any that wait."""
        push = Push(key, time.time(), totals_of(run), dataclasses.replace(run, objects=[]), ended)
        with self._wake:
            self._waiting = push
            self._wake.notify_all()

    def close(self, run: RunCoverage, key: PushKey, timeout: float = 30.0) -> None:
        """Push the run's last totals and wait up to `timeout` for the store to take them."""
        self.push(run, key, ended=True)
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._waiting is not None and time.monotonic() < deadline and self._thread.is_alive():
                self._wake.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            undelivered = self._waiting is not None
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout=10)
        self._drop_connection()
        if undelivered:
            print(f"bpfcov: warning: the store {redacted(self.url.target)} did not take the last push "
                  f"({self._last_error or 'timed out'}); the data file holds it: send it later with "
                  "`bpfcov store push DATA URL`", file=sys.stderr)
        elif not self.quiet:
            print(f"bpfcov: pushed to {redacted(self.url.target)} as host {self.host}", file=sys.stderr)

    def reopen(self) -> None:
        """Reconnect before the next push (SIGHUP to `watch --service`: a new password in
        ~/.pgpass, a server moved behind the same name). Safe from a signal handler: it only
        sets a flag, and never blocks."""
        self._reopen = True

    def _deliver(self) -> None:
        backoff = self.BACKOFF_FIRST
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._waiting is not None or self._closing)
                if self._closing:
                    return
                push = self._waiting
            assert push is not None
            if self._reopen:
                self._reopen = False
                self._drop_connection()
            try:
                if self._conn is None:
                    self._conn = connect(self.url, timeout=5, name=f"bpfcov push {self.host}")
                    with errors_in_one_line(self.url):
                        schema.check(self._conn, redacted(self.url.target))
                apply(self._conn, push, self._acknowledged, self._stored)
            except Exception as e:  # the server is down, restarting or slow: try the newest totals later
                self._drop_connection()
                message = one_line(e)
                if message != self._last_error and not self.quiet:
                    print(f"bpfcov: warning: push {push.key.seq} not delivered ({message}); retrying",
                          file=sys.stderr)
                self._last_error = message
                with self._wake:
                    self._wake.wait_for(lambda: self._closing, timeout=backoff)
                backoff = min(backoff * 2, self.BACKOFF_MAX)
                continue
            backoff, self._last_error = self.BACKOFF_FIRST, ""
            self._acknowledged = {object_key(o): o for o in push.totals}
            with self._wake:
                if self._waiting is push:
                    self._waiting = None
                self._wake.notify_all()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        # A new connection may reach a server that lost what this one stored (restored from a backup).
        self._conn, self._stored = None, set()
