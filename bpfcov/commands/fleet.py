"""store: set up a fleet store (bpfcov/fleet/), and send it data files."""

from __future__ import annotations

import sys

from bpfcov.commands.common import Command
from bpfcov.errors import UsageError


class StoreCommand(Command):
    """Set up a fleet store in PostgreSQL, or send it a data file.

      bpfcov store init URL        create the schema, or migrate it to this bpfcov's version
                                   (safe to run again, and from many hosts at once)
      bpfcov store push DATA URL   send a data file's counts: the rest of a run that was
                                   killed or outlived the server (counted once, whatever
                                   reached the store before), or an older file as a run

    The database must exist and the user may create tables in it; the password comes from
    ~/.pgpass or PGPASSFILE. Example: bpfcov store init postgresql://bpfcov@db.example.com/coverage
    """

    name = "store"

    def prepare_parser(self, parser) -> None:
        parser.add_argument("action", choices=("init", "push"))
        parser.add_argument("operands", nargs="+", metavar="DATA|URL", help="init URL, or push DATA URL")
        parser.add_argument("--host-label", metavar="NAME",
                            help="push: the host a file never pushed before came from (default: its host)")

    def run(self, args) -> int:
        wanted = {"init": 1, "push": 2}[args.action]
        if len(args.operands) != wanted:
            raise UsageError("usage: bpfcov store init URL | bpfcov store push DATA URL")
        url = _postgresql(args.operands[-1], args.action)
        if args.action == "init":
            return _init(url)
        return _push(args.operands[0], url, args.host_label)


def _postgresql(text: str, action: str):
    from bpfcov.fleet.connection import parse_store_url
    url = parse_store_url(text)
    if not url.is_postgresql:
        raise UsageError(f"store {action}: {text} is not a postgresql URL")
    return url


def _init(url) -> int:
    from bpfcov.fleet import schema
    from bpfcov.fleet.connection import connect, errors_in_one_line, redacted
    conn = connect(url)
    try:
        with errors_in_one_line(url):
            before, after = schema.init(conn)
    finally:
        conn.close()
    where = redacted(url.target)
    if before == after:
        print(f"bpfcov: {where}: the store is at schema {after}, nothing to do", file=sys.stderr)
    else:
        print(f"bpfcov: {where}: store schema {before} -> {after}", file=sys.stderr)
    return 0


def _push(data: str, url, host: str | None) -> int:
    from bpfcov.data import store
    from bpfcov.fleet.connection import redacted
    from bpfcov.fleet.push import push_file
    news = push_file(url, store.read(data), host)
    print(f"bpfcov: {data}: " + (f"pushed to {redacted(url.target)}" if news else
                                 "the store already held these counts"), file=sys.stderr)
    return 0
