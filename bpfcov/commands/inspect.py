"""symbols: show the probe points bpfcov finds in an ELF object."""

from __future__ import annotations

import json
import sys

from bpfcov.commands.common import Command, add_debuginfod_option


class SymbolsCommand(Command):
    """List every function bpfcov would probe in an ELF object, with its source location.

    Columns: name (demangled), size, file:line, file offset, probe status (entry, moved:
    probed at its second instruction, unmeasured: no safe probe point).
    """

    name = "symbols"

    def prepare_parser(self, parser) -> None:
        parser.add_argument("path", help="an ELF executable or shared library")
        parser.add_argument("--json", action="store_true", help="print JSON (a stable contract) instead of a table")
        parser.add_argument("--lines", action="store_true", help="include the line probes")
        parser.add_argument("--refs", action="store_true",
                            help="with --json: whether each function is reachable from the object's static "
                                 "roots, what it refers to and what refers to it")
        parser.add_argument("--debug-dir", action="append", default=[], metavar="DIR",
                            help="also look for separate debug files under DIR")
        add_debuginfod_option(parser)
        parser.add_argument("--no-cache", action="store_true", help="index afresh, ignoring the cache")

    def run(self, args) -> int:
        from bpfcov.probes.index import index_object
        index = index_object(args.path, lines=args.lines, debug_dirs=tuple(args.debug_dir),
                             use_cache=not args.no_cache)
        for warning in index.warnings:
            print(f"bpfcov: warning: {warning}", file=sys.stderr)
        out = sys.stdout
        if args.json:
            record = index.to_json()
            if args.refs:
                from bpfcov.prune.refs import function_references
                for f, refs in zip(record["functions"], function_references(args.path, index)):
                    f.update(refs)
            json.dump(record, out, indent=1)
            out.write("\n")
            return 0
        out.write(f"{'NAME':<48} {'SIZE':>7}  {'OFFSET':>10}  {'PROBE':<10} SOURCE\n")
        for f in index.functions:
            where = f"{f.file}:{f.line}" if f.file else "-"
            name = f.display_name if len(f.display_name) <= 48 else f.display_name[:47] + "…"
            out.write(f"{name:<48} {f.size:>7}  {f.offset:>#10x}  {f.probe.value:<10} {where}\n")
        measured = sum(f.measured for f in index.functions)
        out.write(f"{len(index.functions)} functions, {measured} probeable")
        if index.lines is not None:
            out.write(f", {len(index.lines)} line probes")
        out.write("\n")
        return 0
