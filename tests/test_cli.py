"""The command line as users meet it: help, errors, and data files across runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, bpfcov, coverage_json, function_counts, target

from bpfcov.cli import COMMANDS


def one_line_error(result: subprocess.CompletedProcess, expected: str = "") -> None:
    assert result.returncode != 0
    assert result.stderr.startswith("bpfcov: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_help_describes_every_subcommand():
    text = bpfcov("--help").stdout
    for command in COMMANDS:
        assert command.name in text
        sub = bpfcov(command.name, "--help").stdout
        assert len(sub) > 200, command.name


def test_python_dash_m_and_console_script_agree():
    script = os.path.join(os.path.dirname(os.sys.executable), "bpfcov")
    assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout.startswith("bpfcov ")


@pytest.mark.parametrize("args,expected", [
    (["nonsense"], "invalid choice"),
    (["run", "--mode", "fast", "--", "true"], "invalid choice"),
    (["run", "--interval", "-1", "--", "true"], "must be greater than 0"),
    (["run"], "no command given"),
    (["run", "--format", "pdf", "--", "true"], "unknown report format"),
    (["report"], "the following arguments are required"),
    (["attach"], "--pid"),
    (["report", "--fail-under", "150", "x.db"], "between 0 and 100"),
    (["report", "--path-map", "nothing", "x.db"], "OLD=NEW"),
])
def test_bad_usage_gives_one_line_error(args, expected):
    one_line_error(bpfcov(*args, check=False), expected)


def test_unwritable_output_is_detected_before_attaching(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = bpfcov("run", "-o", blocker / "out", "--", target("O0", "shapes"), check=False)
    one_line_error(result, "is not a folder")


def test_command_not_found(tmp_path, bpf):
    one_line_error(bpfcov("run", "-o", tmp_path, "--", "/no/such/program", check=False), "command not found")


def test_a_script_is_a_launcher_and_its_exit_status_is_passed_on(tmp_path, bpf):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    result = bpfcov("run", "-o", tmp_path / "o", "--", script, check=False, cwd=tmp_path)
    assert result.returncode == 3
    assert "nothing was probed" in result.stderr and "Traceback" not in result.stderr


def test_attach_to_missing_pid(tmp_path, bpf):
    one_line_error(bpfcov("attach", "--pid", "999999999", "-o", tmp_path, check=False), "no process with pid")


def test_not_root_is_explained():
    """Only the missing privilege may stand in the way. The unprivileged user can enter
    neither the clone (CI may put it in a root-only folder) nor its virtualenv, so it runs
    the system interpreter on a world-readable copy of the package and of the target: the
    command line loads no third-party module before it checks for root."""
    staging = Path(tempfile.mkdtemp(prefix="bpfcov-unprivileged-"))
    try:
        shutil.copytree(ROOT / "bpfcov", staging / "bpfcov", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(target("O0", "shapes"), staging / "shapes")
        (staging / "out").mkdir(mode=0o777)
        os.chmod(staging / "out", 0o777)
        os.chmod(staging, 0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}  # nobody cannot write its data
        env.update(PYTHONPATH=str(staging), XDG_CACHE_HOME=str(staging / "out" / "cache"))
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                                 "-m", "bpfcov", "watch", staging / "shapes", "-o", staging / "out" / "o",
                                 "--duration", "1"], capture_output=True, text=True, cwd="/", env=env)
    finally:
        shutil.rmtree(staging)
    one_line_error(result, "needs root")


@pytest.mark.parametrize("content", [b"", b"not a database at all", None])
def test_foreign_or_corrupt_data_files_are_refused(tmp_path, content):
    path = tmp_path / "x.db"
    if content is None:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE other (a)")
        db.commit()
        db.close()
    else:
        path.write_bytes(content)
    for args in (["report", path, "-o", tmp_path / "o"], ["merge", path, "-o", tmp_path / "m.db"],
                 ["diff", path, path]):
        one_line_error(bpfcov(*args, check=False), "not a bpfcov data file")


def test_merge_of_two_runs_equals_one_run_doing_both(bpf, tmp_path):
    shapes = target("O0", "shapes")
    bpfcov("run", "-q", "-o", tmp_path / "a", "--mode", "count", "--", shapes, "fact", "4")
    bpfcov("run", "-q", "-o", tmp_path / "b", "--mode", "count", "--", shapes, "area", "circle", "1")
    bpfcov("merge", tmp_path / "a/bpfcov.db", tmp_path / "b/bpfcov.db", "-o", tmp_path / "merged.db")
    bpfcov("report", tmp_path / "merged.db", "-o", tmp_path / "m", "--format", "json")
    both = f"{shapes} fact 4; {shapes} area circle 1"
    bpfcov("run", "-q", "-o", tmp_path / "both", "--mode", "count", "--object", shapes, "--", "/bin/sh", "-c", both)
    merged = coverage_json(tmp_path / "m")
    single = coverage_json(tmp_path / "both")
    assert function_counts(merged) == function_counts(single)
    assert function_counts(merged)["main"] == 2
    assert merged["mode"] == "count"


def test_diff_names_newly_and_no_longer_executed_functions(bpf, tmp_path):
    shapes = target("O0", "shapes")
    bpfcov("run", "-q", "-o", tmp_path / "old", "--", shapes, "fact", "4")
    bpfcov("run", "-q", "-o", tmp_path / "new", "--", shapes, "area", "circle", "1")
    result = json.loads(bpfcov("diff", tmp_path / "old/bpfcov.db", tmp_path / "new/bpfcov.db", "--json").stdout)
    assert {c["name"] for c in result["newly_executed"]} == {"cmd_area", "circle_area"}
    assert {c["name"] for c in result["no_longer_executed"]} == {"factorial"}
    text = bpfcov("diff", tmp_path / "old/bpfcov.db", tmp_path / "new/bpfcov.db").stdout
    assert "+ circle_area" in text and "- factorial" in text
