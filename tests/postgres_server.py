"""A real PostgreSQL server (Debian's `postgresql`) in a scratch folder, for the fleet tests.

The server runs as the `postgres` user (it refuses root) from a folder of its own under
/tmp: the tests' own folders are root's, and a clone may sit in a folder only root can
enter. It listens on a Unix socket in that folder only. The role `fleet` logs in with a
password (scram-sha-256), which the tests hand to libpq in a .pgpass file, as users do.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER, PASSWORD, DATABASE = "fleet", "fleet-secret", "coverage"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup-system.sh")
    return found[-1]


def _free_port() -> int:
    # Only names the socket file (.s.PGSQL.PORT): the server listens on no TCP port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """`with LocalPostgres() as pg:` a running server; pg.url is the store's URL, and
    pg.pgpass the password file to put in PGPASSFILE."""

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections  # PostgreSQL's default; a bench of many hosts needs more
        self.folder = Path(tempfile.mkdtemp(prefix="bpfcov-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.pgpass = self.folder / "pgpass"
        self.url = f"postgresql://{USER}@/{DATABASE}?host={self.folder}&port={self.port}"
        owner = pwd.getpwnam("postgres")
        os.chown(self.folder, owner.pw_uid, owner.pw_gid)

    def _as_postgres(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True,
                              check=check, timeout=120, cwd="/")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run `statement` as the superuser; its output, unaligned."""
        out = self._as_postgres(_bin("psql"), "-h", str(self.folder), "-p", str(self.port), "-U", "postgres",
                                "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", statement)
        return out.stdout.strip()

    def start(self) -> None:
        self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "60",
                          "-o", f"-k {self.folder} -p {self.port} -c listen_addresses='' "
                          f"-c max_connections={self.max_connections}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalPostgres:
        self._as_postgres(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        (self.data / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        self.start()
        self.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        self.sql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        self.write_pgpass(PASSWORD)
        return self

    def write_pgpass(self, password: str) -> None:
        self.pgpass.write_text(f"*:{self.port}:*:{USER}:{password}\n")
        self.pgpass.chmod(0o600)

    def __exit__(self, *exc) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
