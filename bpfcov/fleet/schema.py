"""The store's tables, made by numbered migrations.

`bpfcov store init URL` applies every migration the database has not had yet, each in
its own transaction with the version bump, under an advisory lock so that two hosts
initialising at once do not race. Every push and every report first checks the version:
an older one asks for `store init`, a newer one (written by a newer bpfcov) is refused,
since this bpfcov would misread it.

Tables (version 1):
- builds: a build's static index (its functions and lines), stored once per build-id by
  whoever pushes it first, as the bytes of a bpfcov data file with zero counts; a later
  push with line data replaces one without.
- pushes: (host, run id, sequence number), the key that makes a retried push a no-op.
- runs: per host and run, the last push applied and whether the run has ended; with
  run_functions and run_lines, the run's counts so far, from which each push's gain is
  reckoned (a push carries a run's totals, see push.py). An ended run's rows go.
- watches: per build, host and run, when it began and its last push, so reports can say
  how long, and on how many hosts, a never-executed function was watched.
- function_counts, line_counts: the gains summed per build, host and UTC day (the day of
  the push): --since and --host-label select from them. Functions are keyed by mangled
  name and lines by address, as `bpfcov merge` matches them, so hosts whose probe indexes
  differ (another kernel refusing other entries) still add up.
"""

from __future__ import annotations

from contextlib import contextmanager

from bpfcov.errors import BpfcovError
from bpfcov.fleet.connection import StoreURL, connect, errors_in_one_line, redacted

_LOCK = 0x62706663  # "bpfc": the advisory lock that serialises migrations

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE bpfcov_schema (version integer NOT NULL);
    CREATE TABLE builds (
        build_key text PRIMARY KEY, build_id text, path text NOT NULL, has_lines boolean NOT NULL,
        index_data bytea NOT NULL, stored_at timestamptz NOT NULL DEFAULT now(), stored_by text NOT NULL);
    CREATE TABLE pushes (
        host text NOT NULL, run_id uuid NOT NULL, seq integer NOT NULL, pushed_at timestamptz NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (host, run_id, seq));
    CREATE TABLE runs (
        host text NOT NULL, run_id uuid NOT NULL, last_seq integer NOT NULL, ended boolean NOT NULL,
        PRIMARY KEY (host, run_id));
    CREATE TABLE run_functions (
        host text NOT NULL, run_id uuid NOT NULL, build_key text NOT NULL, name text NOT NULL,
        count bigint NOT NULL, inlined bigint NOT NULL, PRIMARY KEY (host, run_id, build_key, name));
    CREATE TABLE run_lines (
        host text NOT NULL, run_id uuid NOT NULL, build_key text NOT NULL, address bigint NOT NULL,
        count bigint NOT NULL, PRIMARY KEY (host, run_id, build_key, address));
    CREATE TABLE watches (
        build_key text NOT NULL REFERENCES builds, host text NOT NULL, run_id uuid NOT NULL, mode text NOT NULL,
        started timestamptz NOT NULL, last_seen timestamptz NOT NULL, PRIMARY KEY (build_key, host, run_id));
    CREATE TABLE function_counts (
        build_key text NOT NULL REFERENCES builds, host text NOT NULL, day date NOT NULL, name text NOT NULL,
        count bigint NOT NULL, inlined bigint NOT NULL,
        first_executed timestamptz, last_executed timestamptz,
        PRIMARY KEY (build_key, day, host, name));
    CREATE TABLE line_counts (
        build_key text NOT NULL REFERENCES builds, host text NOT NULL, day date NOT NULL, address bigint NOT NULL,
        count bigint NOT NULL, PRIMARY KEY (build_key, day, host, address));
    INSERT INTO bpfcov_schema VALUES (0);
    """,
]
VERSION = len(MIGRATIONS)


def installed_version(conn) -> int | None:
    """The database's schema version, None when it has no bpfcov schema."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('bpfcov_schema') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return None
        cur.execute("SELECT version FROM bpfcov_schema")
        row = cur.fetchone()
        return int(row[0]) if row else 0


def init(conn) -> tuple[int, int]:
    """Apply the migrations the database lacks: (version before, version after)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        before = installed_version(conn) or 0
        if before > VERSION:
            raise BpfcovError(_newer(before))
        for version in range(before + 1, VERSION + 1):
            cur.execute(MIGRATIONS[version - 1])
            cur.execute("UPDATE bpfcov_schema SET version = %s", (version,))
    return before, VERSION


def check(conn, url: str) -> None:
    """Refuse a store this bpfcov cannot use, in one line."""
    version = installed_version(conn)
    conn.rollback()  # leave no transaction open behind a check
    if version is None or version == 0:
        raise BpfcovError(f"{url} holds no bpfcov store: create it with `bpfcov store init {url}`")
    if version > VERSION:
        raise BpfcovError(_newer(version))
    if version < VERSION:
        raise BpfcovError(f"{url} holds a store of schema {version}, older than this bpfcov's {VERSION}: "
                          f"migrate it with `bpfcov store init {url}`")


@contextmanager
def opened(url: StoreURL):
    """A connection to a store this bpfcov can use, closed afterwards; the driver's errors
    become one-line BpfcovErrors. For commands that talk to the store once and stop."""
    conn = connect(url)
    try:
        with errors_in_one_line(url):
            check(conn, redacted(url.target))
            yield conn
    finally:
        conn.close()


def check_within(cur) -> None:
    """The version check every push makes inside its own transaction: a store migrated by
    a newer bpfcov while this one runs is refused from the next push on."""
    cur.execute("SELECT version FROM bpfcov_schema")
    row = cur.fetchone()
    version = int(row[0]) if row else 0
    if version > VERSION:
        raise BpfcovError(_newer(version))
    if version < VERSION:
        raise BpfcovError(f"the store's schema is version {version}, older than this bpfcov's {VERSION}")


def _newer(version: int) -> str:
    return (f"the store's schema is version {version}, newer than this bpfcov's {VERSION}: "
            "upgrade bpfcov to use it")
