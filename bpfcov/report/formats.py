"""The report formats and their file names (kept apart from the writers, so that the
command line can name them without loading jinja2 and the rest)."""

from __future__ import annotations

from bpfcov.errors import BpfcovError

FORMATS = ("lcov", "html", "json", "cobertura")
DEFAULT_FORMATS = ("lcov", "html", "json")
FILE_NAMES = {"lcov": "coverage.info", "html": "html", "json": "coverage.json", "cobertura": "coverage.xml"}


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise BpfcovError(f"unknown report format {', '.join(unknown) or repr(text)}: choose from {', '.join(FORMATS)}")
    return formats
