"""Demangling C++ (Itanium) and Rust (legacy and v0) names for display.

binutils' c++filt knows all three schemes; one process demangles a whole object's names
through a pipe, which is far cheaper than one call per name. Without c++filt, names are
shown as they are: the mangled name is the identity anyway.
"""

from __future__ import annotations

import re
import shutil
import subprocess

# Legacy Rust symbols end in a hash that says nothing to a reader: `crate::f::h0123…`;
# v0 symbols carry crate disambiguators: `crate[1a2b3c]::f`.
_RUST_LEGACY_HASH = re.compile(r"::h[0-9a-f]{16}$")
_RUST_V0_DISAMBIGUATOR = re.compile(r"\[[0-9a-f]{1,16}\]")


def _looks_mangled(name: str) -> bool:
    return name.startswith(("_Z", "_R", "__Z"))


def demangle_all(names: list[str]) -> dict[str, str]:
    """Map each mangled name in `names` to its demangled form (absent when unchanged)."""
    wanted = sorted({n for n in names if _looks_mangled(n) and "\n" not in n})
    if not wanted:
        return {}
    tool = shutil.which("c++filt")
    if tool is None:
        return {}
    try:
        out = subprocess.run([tool], input="\n".join(wanted) + "\n", capture_output=True,
                             text=True, errors="replace", timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    demangled = out.split("\n")
    if len(demangled) < len(wanted):
        return {}
    result = {}
    for mangled, plain in zip(wanted, demangled):
        if mangled.startswith("_ZN") and mangled.endswith("E"):
            plain = _RUST_LEGACY_HASH.sub("", plain)
        elif mangled.startswith("_R"):
            plain = _RUST_V0_DISAMBIGUATOR.sub("", plain)
        if plain and plain != mangled:
            result[mangled] = plain
    return result
