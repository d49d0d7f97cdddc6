"""Options from a file, so that a project says once what it always passes.

Read from the current folder: `.bpfcov.toml` (its top level) or else `pyproject.toml`
(its [tool.bpfcov] table). Keys are the long option names; an option given on the command
line wins over the file. A key bpfcov does not know is an error that names it: a
misspelled option silently ignored would be worse than none.

    [tool.bpfcov]
    format = ["lcov", "cobertura"]
    fail-under = 80
    path-map = ["/build/src=src"]
    exclude = ["^_GLOBAL__"]
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from typing import Any

from bpfcov.data.status import Mode
from bpfcov.engine.attach import CHOICES as ATTACH_CHOICES
from bpfcov.errors import BpfcovError

FILES = (".bpfcov.toml", "pyproject.toml")


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _texts(key: str, value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError("a string or a list of strings")
    return list(values)


def _formats(key: str, value: Any) -> str:
    from bpfcov.report.formats import parse_formats
    return ",".join(parse_formats(",".join(_texts(key, value))))


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _percent(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError("a number from 0 to 100")
    return float(value)


def _attach_method(key: str, value: Any) -> str:
    if _text(key, value) not in ATTACH_CHOICES:
        raise ValueError(" or ".join(ATTACH_CHOICES))
    return value


def _debuginfod_urls(key: str, value: Any) -> list[str]:
    from bpfcov.probes.debuginfod import check_url
    urls = _texts(key, value)
    try:
        return [check_url(url) for url in urls]
    except ValueError:
        raise ValueError("a list of http://, https:// or file:// URLs") from None


def _mode(key: str, value: Any) -> str:
    return Mode.parse(_text(key, value)).value


def _lcov_format(key: str, value: Any) -> int:
    if value not in (1, 2) or isinstance(value, bool):
        raise ValueError("1 or 2")
    return int(value)


def _path_maps(key: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        pairs = [text.partition("=")[::2] for text in _texts(key, value)]
    if not all(isinstance(old, str) and old and isinstance(new, str) for old, new in pairs):
        raise ValueError('a list of "OLD=NEW" strings, or a table of OLD = "NEW"')
    return [(old, new) for old, new in pairs]


def _store(key: str, value: Any) -> str:
    from bpfcov.fleet.connection import parse_store_url
    try:
        parse_store_url(_text(key, value))
    except BpfcovError:
        raise ValueError("sqlite:///PATH, or a postgresql:// URL without a password") from None
    return value


# key -> (the argparse destination, how to read its value)
KEYS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "format": ("format", _formats),
    "fail-under": ("fail_under", _percent),
    "path-map": ("path_map", _path_maps),
    "source-root": ("source_root", _text),
    "relative-to": ("relative_to", _text),
    "include": ("include", _texts),
    "exclude": ("exclude", _texts),
    "mode": ("mode", _mode),
    "lines": ("lines", _flag),
    "libs": ("libs", _flag),
    "libs-only": ("libs_only", _texts),
    "include-path": ("include_path", _texts),
    "exclude-path": ("exclude_path", _texts),
    "all-execs": ("all_execs", _flag),
    "lcov-format": ("lcov_format", _lcov_format),
    "attach-method": ("attach_method", _attach_method),
    "debuginfod": ("debuginfod", _debuginfod_urls),
    "debuginfod-sources": ("debuginfod_sources", _flag),
    "store": ("store", _store),
}


def find(folder: str) -> tuple[str, dict] | None:
    """The configuration file in `folder` and its bpfcov table, if there is one."""
    for name in FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise BpfcovError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise BpfcovError(f"cannot read {path}: {e.strerror}") from None
        table = document if name == ".bpfcov.toml" else document.get("tool", {}).get("bpfcov")
        if table is not None:
            if not isinstance(table, dict):
                raise BpfcovError(f"{path}: [tool.bpfcov] must be a table")
            return path, table
    return None


def read(folder: str) -> dict[str, Any]:
    """Options from the configuration file in `folder`, by argparse destination."""
    found = find(folder)
    if found is None:
        return {}
    path, table = found
    options = {}
    for key, value in table.items():
        if key not in KEYS:
            raise BpfcovError(f"{path}: unknown key {key!r} (bpfcov knows {', '.join(KEYS)})")
        dest, convert = KEYS[key]
        try:
            options[dest] = convert(key, value)
        except ValueError as e:
            raise BpfcovError(f"{path}: {key} must be {e}") from None
    return options
