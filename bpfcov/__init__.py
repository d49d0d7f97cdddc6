"""bpfcov: code coverage of native ELF programs with eBPF uprobes, without recompiling.

The library's interface (see bpfcov/api.py): run, attach, watch, load, and Coverage.
"""

__version__ = "0.1.0"

from bpfcov.api import Coverage, attach, load, run, watch  # noqa: E402

__all__ = ["Coverage", "attach", "load", "run", "watch", "__version__"]
