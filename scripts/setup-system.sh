#!/usr/bin/env bash
# Install what bpfcov needs from Debian on a fresh Debian 12 machine (run as root).
# Idempotent: when everything is already present it returns in well under a second.
set -euo pipefail

kernel=$(uname -r)
modules=/lib/modules/$kernel

# Debian packages: bcc's Python module and its tools, the venv module, bpftool for leak
# checks, compilers for the sample targets, and the oracles the tests compare against
# (valgrind, lcov/genhtml, gdb, and chromium to render the HTML report); python3.11-dbg is
# a large binary with full DWARF (the interpreter built with debug info) for tests at scale;
# cmake for the ctest runner test; libdw1 (elfutils) reads the DWARF tree for inlined functions;
# libdebuginfod1 is elfutils' debuginfod client, and debuginfod the server the tests start;
# lld links the sqlite workload with an orderfile for the layout bench, and linux-perf
# counts its page faults and iTLB misses; python3-setuptools builds the C extension sample;
# postgresql is the fleet store's server, which the tests start in a temporary folder.
packages=(python3-bpfcc bpfcc-tools python3-venv python3-dev python3-setuptools bpftool gcc g++ make cmake binutils libdw1
          libdebuginfod1 debuginfod valgrind lcov gdb chromium python3.11-dbg lld linux-perf postgresql)

# Rust (rustc for the Rust sample target, cargo for the `cargo test` runner test): the
# machine's own if it has them.
if ! command -v rustc >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/rustc" ]; then
    packages+=(rustc)
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    packages+=(cargo)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

headers_ok() { [ -e "$modules/build/include/linux/kconfig.h" ] || [ -e "$modules/build/include/generated/autoconf.h" ]; }

if [ ${#missing[@]} -eq 0 ] && headers_ok; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]} (and kernel headers)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! headers_ok; then
    if apt-get install -y -qq --no-install-recommends "linux-headers-$kernel" >/dev/null 2>&1; then
        :
    else
        # No packaged headers for this kernel: bcc only needs a plausible header tree to
        # compile our tiny program (types come from BTF-free includes), so the distro's
        # generic headers stand in.
        apt-get install -y -qq --no-install-recommends linux-headers-amd64 >/dev/null
        generic=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
        common=${generic%-amd64}-common
        mkdir -p "$modules"
        ln -sfn "$generic" "$modules/build"
        ln -sfn "$common" "$modules/source"
        echo "setup: no headers packaged for kernel $kernel; linked $(basename "$generic") in their place" >&2
    fi
fi
