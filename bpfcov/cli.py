"""The bpfcov command line: one parser, one subcommand class each, one error policy.

Errors bpfcov can explain become `bpfcov: error: <one line>` and exit status 1 (2 for
usage); anything else is a bug, reported the same way, with the traceback under --debug.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

from bpfcov import __version__
from bpfcov.commands.data import DiffCommand, MergeCommand, ReportCommand
from bpfcov.commands.fleet import StoreCommand
from bpfcov.commands.inspect import SymbolsCommand
from bpfcov.commands.tracing import AttachCommand, RunCommand, WatchCommand
from bpfcov.errors import BpfcovError

COMMANDS = [RunCommand(), AttachCommand(), WatchCommand(), SymbolsCommand(), ReportCommand(), MergeCommand(),
            DiffCommand(), StoreCommand()]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other bpfcov error; --help says the rest.
        self.exit(2, f"bpfcov: error: {message} (see {self.prog} --help)\n")


def _given(parser: argparse.ArgumentParser, argv: list[str], dest: str) -> bool:
    """Whether an option with destination `dest` appears on the command line (before --)."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    flags = {flag for action in parser._actions if action.dest == dest for flag in action.option_strings}
    return any(word in flags or word.split("=", 1)[0] in flags for word in words)


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Fill in the options the command line left out from the folder's configuration file."""
    from bpfcov import config
    for dest, value in config.read(os.getcwd()).items():
        if hasattr(args, dest) and not _given(parser, argv, dest):
            setattr(args, dest, value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bpfcov", description="Code coverage of native ELF programs with eBPF uprobes, "
                                                "without recompiling.")
    parser.add_argument("--version", action="version", version=f"bpfcov {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback when bpfcov fails")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        doc = inspect.getdoc(command) or ""
        summary, _, details = doc.partition("\n")
        p = sub.add_parser(command.name, help=summary, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.prepare_parser(p)
        p.set_defaults(handler=command, subparser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "subcommand", None):
        parser.print_help(sys.stderr)
        return 2
    return _run(args, argv)


def _run(args, argv: list[str]) -> int:
    try:
        apply_config(args, args.subparser, argv)
        if getattr(args, "debuginfod", None):
            from bpfcov.probes.debuginfod import servers
            with servers(args.debuginfod):
                return args.handler.run(args)
        return args.handler.run(args)
    except BpfcovError as e:
        if args.debug:
            raise
        print(f"bpfcov: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("bpfcov: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, unless --debug
        if args.debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"bpfcov: error: internal error: {type(e).__name__}: {first} (run with --debug for details)",
              file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
