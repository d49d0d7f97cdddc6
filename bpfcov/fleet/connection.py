"""Which store a --store URL names, and opening a PostgreSQL one.

`sqlite:///path/to/bpfcov.db` is a data file, today's default; `postgresql://...` (or
`postgres://...`) is a libpq connection URL, Unix sockets included
(`postgresql:///bpfcov?host=/run/postgresql`). A password never travels on the command
line, where `ps` shows it to every user of the host: it comes from PGPASSFILE or
~/.pgpass, as for psql.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bpfcov.errors import BpfcovError, UsageError

_POSTGRESQL_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class StoreURL:
    kind: str       # "sqlite" or "postgresql"
    target: str     # the data file's path, or the libpq URL

    @property
    def is_postgresql(self) -> bool:
        return self.kind == "postgresql"


def parse_store_url(text: str) -> StoreURL:
    """A --store value; anything else than the two kinds is a usage error."""
    parts = urlsplit(text)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/"):
            raise UsageError(f"--store {text}: a data file is sqlite:///ABSOLUTE/PATH (three slashes)")
        return StoreURL("sqlite", path)
    if parts.scheme in _POSTGRESQL_SCHEMES:
        if parts.password is not None or "password=" in parts.query:
            raise UsageError("--store: the URL holds a password, which any user of this host can read from "
                             "the process list; put it in ~/.pgpass or the file PGPASSFILE names")
        return StoreURL("postgresql", text)
    raise UsageError(f"--store {text}: not a store URL (sqlite:///PATH or postgresql://...)")


def is_store_url(text: str) -> bool:
    return urlsplit(text).scheme in ("sqlite", *_POSTGRESQL_SCHEMES)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise BpfcovError("a postgresql store needs the psycopg driver: pip install 'bpfcov[postgresql]'") from None
    return psycopg


def connect(url: StoreURL, timeout: float = 10.0, name: str = "bpfcov"):
    """An open connection (autocommit off), or BpfcovError in one line: server down, bad
    credentials, no such database. `name` is what pg_stat_activity shows for it."""
    psycopg = _psycopg()
    try:
        return psycopg.connect(url.target, connect_timeout=max(1, round(timeout)), application_name=name)
    except psycopg.Error as e:
        raise BpfcovError(f"cannot open the store {redacted(url.target)}: {one_line(e)}") from None


@contextmanager
def errors_in_one_line(url: StoreURL):
    """Turn the driver's errors (a dropped connection, a refused statement) into
    BpfcovError, for commands that talk to the store once and stop."""
    psycopg = _psycopg()
    try:
        yield
    except psycopg.Error as e:
        raise BpfcovError(f"{redacted(url.target)}: {one_line(e)}") from None


def one_line(e: BaseException) -> str:
    """A driver message on one line: libpq's span several and repeat the server's address."""
    text = " ".join(str(e).split())
    return text.removeprefix("connection failed: ") or type(e).__name__


def redacted(target: str) -> str:
    """The URL as messages show it: the user name is kept, anything after '?' is not."""
    return target.split("?", 1)[0]
