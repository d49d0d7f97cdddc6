"""Test runners: `bpfcov run` on a launcher, make, a shell script, a pyenv-style shim,
ctest and cargo test covers the programs they exec, with gcov's counts as the oracle.

Each runner is run twice: once on the --coverage builds with GCOV_PREFIX set (gcov sums
every run of a program in its .gcda file), once on the plain builds under `bpfcov run
--mode count`. bpfcov's count of every function of every exec'd program must equal gcov's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUILD, assert_counts_equal_gcov, bpfcov, coverage_json, function_counts, gcov_counts_of, target

# What the runners below run: three sample programs, one of them four times.
SUITE = [
    ["shapes", "fact", "6"],
    ["inventory", "list"],
    ["threads", "2", "100"],
    *(["shapes", "area", "circle", str(n)] for n in (1, 2, 3)),
]


def _suite_lines(folder: str) -> list[str]:
    return [" ".join([f"{folder}/{words[0]}", *words[1:]]) for words in SUITE]


def _oracle_by_program(gcov: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """gcov's counts by program: the sample Makefile names each .gcda after its program."""
    return {Path(path).stem: counts for path, counts in gcov.items()}


def _compare(report: dict, oracle: dict[str, dict[str, int]], programs) -> None:
    for program in programs:
        objects = [o for o in report["objects"] if os.path.basename(o["path"]) == program]
        assert len(objects) == 1, f"{program}: {len(objects)} objects in the report, not one"
        assert assert_counts_equal_gcov(function_counts(report, program), oracle[program]) >= 2, program


def _traced_and_oracle(tmp_path, runner, *options, env=None, cwd=BUILD):
    """bpfcov's report of `runner("O0")` and gcov's counts of `runner("gcov")`."""
    oracle = _oracle_by_program(gcov_counts_of(runner(str(BUILD / "gcov")), tmp_path / "oracle", env, cwd))
    out = tmp_path / "out"
    result = bpfcov("run", "-o", out, "--mode", "count", *options, "--", *runner(str(BUILD / "O0")),
                    env=dict(os.environ, **(env or {})), cwd=cwd)
    return coverage_json(out), oracle, result


@pytest.mark.parametrize("how", [[], ["-s"]], ids=["fork and exec", "posix_spawn"])
def test_a_launcher_s_program_is_covered_with_gcov_s_counts(bpf, tmp_path, how):
    target("O0", "launcher")
    report, oracle, _ = _traced_and_oracle(tmp_path, lambda b: [f"{b}/launcher", *how, f"{b}/shapes", "fact", "6"])
    _compare(report, oracle, ["shapes", "launcher"])


def test_make_test_covers_every_test_program_with_summed_counts(bpf, tmp_path, attach_method):
    makefile = tmp_path / "Makefile"
    makefile.write_text("test:\n" + "".join(f"\t{line.replace('{B}', '$(B)')}\n"
                                            for line in _suite_lines("{B}")))
    report, oracle, result = _traced_and_oracle(
        tmp_path, lambda b: ["make", "-s", "-f", str(makefile), f"B={b}", "test"], "--attach-method", attach_method)
    _compare(report, oracle, ["shapes", "inventory", "threads"])
    assert function_counts(report, "shapes")["factorial"] > 0
    # make (and any shell it starts) is a launcher, said so in the summary.
    assert "3 exec'd programs probed" in result.stderr and "outside the included folders" in result.stderr


def test_a_shell_script_s_programs_are_covered(bpf, tmp_path):
    script = tmp_path / "run-tests.sh"
    script.write_text("#!/bin/sh\nset -e\nB=\"$1\"\n" + "\n".join(_suite_lines("$B")) + "\n")
    script.chmod(0o755)
    report, oracle, _ = _traced_and_oracle(tmp_path, lambda b: [str(script), b])
    _compare(report, oracle, ["shapes", "inventory", "threads"])


def test_a_pyenv_style_shim_on_path_is_a_launcher(bpf, tmp_path):
    """`bpfcov run -- shapes …` where `shapes` on PATH is a script that execs the real one."""
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "shapes"
    shim.write_text('#!/bin/sh\nexec "$REAL_SHAPES" "$@"\n')
    shim.chmod(0o755)
    path = f"{shims}:{os.environ['PATH']}"
    oracle = _oracle_by_program(gcov_counts_of(["shapes", "area", "square", "3"], tmp_path / "oracle",
                                               {"PATH": path, "REAL_SHAPES": str(BUILD / "gcov/shapes")}, BUILD))
    out = tmp_path / "out"
    bpfcov("run", "-o", out, "--mode", "count", "--", "shapes", "area", "square", "3", cwd=BUILD,
           env=dict(os.environ, PATH=path, REAL_SHAPES=str(BUILD / "O0/shapes")))
    _compare(coverage_json(out), oracle, ["shapes"])


def test_ctest_runs_are_covered(bpf, tmp_path):
    if shutil.which("cmake") is None:
        pytest.fail("cmake is missing: scripts/setup-system.sh installs it")
    project = tmp_path / "project"
    project.mkdir()
    shapes_c = BUILD.parent / "shapes" / "shapes.c"
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(suite C)\nenable_testing()\n"
        f"add_executable(shapes_test {shapes_c})\n"
        "add_test(NAME fact COMMAND shapes_test fact 5)\n"
        "add_test(NAME area COMMAND shapes_test area circle 2)\n"
        "add_test(NAME apply COMMAND shapes_test apply negate 3)\n")
    for flavour, flags in (("O0", "-O0 -g"), ("gcov", "-O0 -g --coverage")):
        subprocess.run(["cmake", "-S", project, "-B", project / flavour, f"-DCMAKE_C_FLAGS={flags}",
                        f"-DCMAKE_EXE_LINKER_FLAGS={'--coverage' if flavour == 'gcov' else ''}"],
                       check=True, capture_output=True)
        subprocess.run(["cmake", "--build", project / flavour], check=True, capture_output=True)
    gcov = gcov_counts_of(["ctest", "--test-dir", "gcov"], tmp_path / "oracle", cwd=project)
    oracle = {"shapes_test": next(c for path, c in gcov.items() if "shapes_test.dir" in path)}
    out = tmp_path / "out"
    bpfcov("run", "-o", out, "--mode", "count", "--", "ctest", "--test-dir", "O0", cwd=project)
    _compare(coverage_json(out), oracle, ["shapes_test"])


CRATE_LIB = """
#[inline(never)]
pub fn square(x: u64) -> u64 { x * x }

#[inline(never)]
pub fn sum_of_squares(n: u64) -> u64 { (1..=n).map(square).sum() }

#[inline(never)]
pub fn never_called() -> u64 { 42 }

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sums() { assert_eq!(sum_of_squares(10), 385); }
    #[test]
    fn squares() { assert_eq!(square(7), 49); }
    #[test]
    #[ignore]
    fn ignored() { assert_eq!(never_called(), 42); }
}
"""


def test_cargo_test_covers_the_test_harness(bpf, tmp_path):
    """No gcov for Rust: the oracle is the test code itself, which calls square 11 times
    (10 from sum_of_squares, 1 directly) and sum_of_squares once; never_called is linked
    in by an ignored test and never runs."""
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.exists(cargo):
        pytest.fail("cargo is missing: this kind of machine ships a Rust toolchain")
    crate = tmp_path / "crate"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text('[package]\nname = "squares"\nversion = "0.1.0"\nedition = "2021"\n')
    (crate / "src/lib.rs").write_text(CRATE_LIB)
    env = dict(os.environ, CARGO_TARGET_DIR=str(crate / "target"), CARGO_NET_OFFLINE="true",
               PATH=f"{os.path.dirname(cargo)}:{os.environ['PATH']}")
    subprocess.run(["cargo", "test", "--no-run", "-q"], cwd=crate, env=env, check=True, capture_output=True)
    out = tmp_path / "out"
    # As a user types it: cargo found on PATH, a launcher.
    bpfcov("run", "-o", out, "--mode", "count", "--", "cargo", "test", "-q", cwd=crate, env=env)
    report = coverage_json(out)
    harness = [o for o in report["objects"] if "/target/debug/deps/squares-" in o["path"]]
    assert len(harness) == 1, [o["path"] for o in report["objects"]]
    by_name = {f["display_name"].split("::")[-1]: f for f in harness[0]["functions"]
               if f["display_name"].startswith("squares::")}
    assert by_name["square"]["count"] == 11
    assert by_name["sum_of_squares"]["count"] == 1
    assert by_name["never_called"]["status"] == "unhit"
    # cargo and rustc live outside the crate: launchers, not probed.
    assert not any("/.cargo/" in o["path"] or "/.rustup/" in o["path"] for o in report["objects"])


def test_programs_outside_the_current_folder_are_probed_only_when_asked(bpf, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = ["sh", "-c", f"{target('O0', 'shapes')} fact 4"]
    default = bpfcov("run", "-o", tmp_path / "default", "--", *command, cwd=elsewhere)
    assert coverage_json(tmp_path / "default")["objects"] == []
    assert "nothing was probed" in default.stderr and "outside the included folders" in default.stderr

    bpfcov("run", "-o", tmp_path / "included", "--include-path", BUILD / "O0", "--", *command, cwd=elsewhere)
    assert function_counts(coverage_json(tmp_path / "included"), "shapes")["factorial"] > 0

    excluded = bpfcov("run", "-o", tmp_path / "excluded", "--include-path", BUILD, "--exclude-path", BUILD / "O0",
                      "--", *command, cwd=elsewhere)
    assert coverage_json(tmp_path / "excluded")["objects"] == []
    assert "under an excluded folder" in excluded.stderr

    # --all-execs takes everything the trace runs: the shell included.
    bpfcov("run", "-o", tmp_path / "all", "--all-execs", "--", *command, cwd=elsewhere)
    paths = [os.path.basename(o["path"]) for o in coverage_json(tmp_path / "all")["objects"]]
    assert "shapes" in paths


def test_copies_of_one_binary_are_one_object(bpf, tmp_path):
    """A runner that rebuilds or copies a test binary runs one build-id from two files:
    the report shows it once, with the runs' counts summed."""
    for name in ("a", "b"):
        shutil.copy(target("O0", "shapes"), tmp_path / name)
    out = tmp_path / "out"
    bpfcov("run", "-o", out, "--mode", "count", "--", "sh", "-c", "./a fact 3 && ./b fact 4", cwd=tmp_path)
    report = coverage_json(out)
    assert len(report["objects"]) == 1
    assert function_counts(report)["factorial"] == 3 + 4  # factorial(n) runs n times


def test_attach_follows_the_programs_its_process_runs(bpf, tmp_path):
    """A running launcher (here a shell waiting for its cue) is attached; the programs it
    runs afterwards are probed at their exec, as under run."""
    shell = subprocess.Popen(["sh", "-c", "read cue; ./O0/shapes fact 5; ./O0/shapes fact 2"], cwd=BUILD,
                             stdin=subprocess.PIPE)
    out = tmp_path / "out"
    tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "attach", "--pid", str(shell.pid), "-o", out,
                               "--mode", "count"], cwd=BUILD, stderr=subprocess.PIPE, text=True)
    try:
        # The shell has no symbols: a warning says so before tracing starts.
        said = [tracer.stderr.readline()]
        while "Tracing" not in said[-1] and said[-1] and len(said) < 5:
            said.append(tracer.stderr.readline())
        assert "Tracing" in said[-1] and any("no function symbols" in line for line in said), said
        shell.communicate(b"go\n", timeout=60)
        assert tracer.wait(timeout=60) == 0
    finally:
        shell.kill()
        tracer.kill()
    assert function_counts(coverage_json(out), "shapes")["factorial"] == 5 + 2
