"""report, merge and diff: the subcommands that work from data files alone."""

from __future__ import annotations

import json
import os
import sys

from bpfcov.commands.common import (
    Command,
    add_debuginfod_option,
    add_report_options,
    check_output_dir,
    validate_formats,
    write_all,
)
from bpfcov.errors import BpfcovError, UsageError


def _merged(coverages, always: bool = False):
    """One coverage summing all of them (one alone is taken as it is, unless `always`)."""
    from bpfcov.api import Coverage
    from bpfcov.data.merge import merge
    if len(coverages) == 1 and not always:
        return coverages[0]
    return Coverage(merge([c.data for c in coverages]))


class ReportCommand(Command):
    """Write reports again from one or more data files (several are merged first).

    Example: bpfcov report out/bpfcov.db -o out --format lcov,cobertura --relative-to $PWD
    """

    name = "report"

    def prepare_parser(self, parser) -> None:
        parser.add_argument("data", nargs="+", metavar="DATA",
                            help="bpfcov.db files, or a fleet store's URL (postgresql://...)")
        parser.add_argument("--include", action="append", default=[], metavar="REGEX",
                            help="report only functions whose name matches (repeatable)")
        parser.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                            help="leave out functions whose name matches (repeatable)")
        add_report_options(parser)
        add_debuginfod_option(parser)  # for --debuginfod-sources
        fleet = parser.add_argument_group("from a fleet store")
        fleet.add_argument("--build-id", metavar="ID", help="only this build")
        fleet.add_argument("--since", metavar="SPAN",
                           help="only counts of the last SPAN: 30d, 12h, 2w (counts are kept per UTC day)")
        fleet.add_argument("--host-label", action="append", default=[], metavar="NAME",
                           help="only these hosts (repeatable)")

    def run(self, args) -> int:
        import bpfcov
        from bpfcov.fleet.connection import is_store_url
        validate_formats(args)
        if (args.build_id or args.since or args.host_label) and not any(is_store_url(p) for p in args.data):
            raise UsageError("--build-id, --since and --host-label select from a fleet store: give its URL")
        coverages = [_from_store(p, args) if is_store_url(p) else bpfcov.load(p) for p in args.data]
        check_output_dir(args.output)
        return write_all(_merged(coverages).data, args, None, False)


def _from_store(text: str, args):
    """The coverage a store holds for the selection the options make."""
    import time

    from bpfcov.api import Coverage
    from bpfcov.data import store
    from bpfcov.fleet import schema
    from bpfcov.fleet.connection import parse_store_url, redacted
    from bpfcov.fleet.query import Selection, fleet_coverage, parse_since
    url = parse_store_url(text)
    if not url.is_postgresql:
        return Coverage(store.read(url.target))
    selection = Selection(args.build_id, parse_since(args.since, time.time()) if args.since else None,
                          tuple(args.host_label))
    with schema.opened(url) as conn:
        run = fleet_coverage(conn, selection)
    if not run.objects:
        raise BpfcovError(f"{redacted(url.target)}: no build matches (build-id, hosts, --since)")
    return Coverage(run)


class MergeCommand(Command):
    """Sum the counts of several data files into one (same binaries matched by build-id).

    Example: bpfcov merge host1.db host2.db -o all.db
    """

    name = "merge"

    def prepare_parser(self, parser) -> None:
        parser.add_argument("data", nargs="+", metavar="DATA", help="bpfcov.db files")
        parser.add_argument("-o", "--output", required=True, metavar="MERGED.db", help="the data file to write")

    def run(self, args) -> int:
        import bpfcov
        coverages = [bpfcov.load(p) for p in args.data]
        check_output_dir(os.path.dirname(os.path.abspath(args.output)))
        _merged(coverages, always=True).save(args.output)
        print(f"bpfcov: merged {len(coverages)} data files into {args.output}", file=sys.stderr)
        return 0


class DiffCommand(Command):
    """Show functions newly executed, and no longer executed, between two data files."""

    name = "diff"

    def prepare_parser(self, parser) -> None:
        parser.add_argument("old", metavar="OLD.db")
        parser.add_argument("new", metavar="NEW.db")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args) -> int:
        from bpfcov.data import store
        from bpfcov.data.merge import diff
        result = diff(store.read(args.old), store.read(args.new))
        if args.json:
            def rows(changes):
                return [{"object": c.object_path, "name": c.name, "display_name": c.display_name} for c in changes]
            json.dump({"newly_executed": rows(result.newly_executed),
                       "no_longer_executed": rows(result.no_longer_executed)}, sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
        for title, changes, mark in (("newly executed", result.newly_executed, "+"),
                                     ("no longer executed", result.no_longer_executed, "-")):
            print(f"{len(changes)} functions {title}")
            for c in changes:
                print(f"  {mark} {c.display_name}  ({os.path.basename(c.object_path)})")
        return 0
