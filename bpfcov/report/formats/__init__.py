"""The report formats: every module of this package that defines a Reporter subclass.

Found by listing the package, so that a new format is one new file. Writers import their
heavy dependencies (jinja2) inside `write`, so that naming the formats stays cheap for the
command line, which reads them before it starts compiling the BPF program.
"""

from __future__ import annotations

import importlib
import pkgutil

from bpfcov.errors import BpfcovError
from bpfcov.report.reporter import Reporter


def _discover() -> dict[str, Reporter]:
    found: dict[str, Reporter] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Reporter) and value is not Reporter \
                    and value.__module__ == module.__name__:
                found[value.name] = value()
    return found


REPORTERS: dict[str, Reporter] = _discover()
DEFAULT_FORMATS = tuple(name for name, reporter in REPORTERS.items() if reporter.default)


def parse_formats(text: str) -> list[str]:
    """The format names in a comma-separated list, each checked."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in REPORTERS]
    if unknown or not formats:
        raise BpfcovError(f"unknown report format {', '.join(unknown) or repr(text)}: "
                          f"choose from {', '.join(REPORTERS)}")
    return formats


def formats_help() -> str:
    return "; ".join(f"{r.name}: {r.help} ({r.file_name})" for r in REPORTERS.values())
