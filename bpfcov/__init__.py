"""bpfcov: code coverage of native ELF programs with eBPF uprobes, without recompiling."""

__version__ = "0.1.0"
