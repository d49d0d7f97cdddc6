"""The coverage.py plugin: a Python package with a C extension (sample_targets/pyext),
its pytest suite run under `coverage run` under `bpfcov run --lines --libs-only`, then
`coverage combine`: coverage.py's own reports count the C file beside the Python ones.

The oracle for the C file is gcov, on a --coverage build of the same extension running
the same tests; for the Python files, coverage.py alone. gcov and the line table differ
in known ways (tests/test_lines.py: declaration lines are gcov's alone, brace lines ours),
which are checked, not ignored.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import BUILD, ROOT, bpfcov

PYEXT = ROOT / "sample_targets" / "pyext"
NATIVE = str(PYEXT / "geometry" / "_native.c")
SUITE = str(PYEXT / "tests")
VENV_BIN = str(Path(sys.executable).parent)
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE]


def project(tmp_path: Path, build: str) -> tuple[Path, dict]:
    """A project folder whose coverage.py configuration enables the plugin, and the
    environment that imports the package from `build` (plain or gcov)."""
    folder = tmp_path / f"project-{build}"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[tool.coverage.run]\nplugins = ["bpfcov.coveragepy"]\n'
        '[tool.coverage."bpfcov.coveragepy"]\nstatements = "bpfcov-out"\n')
    # `python` by name, from this venv: the interpreter is a launcher, not a subject.
    env = dict(os.environ, PYTHONPATH=str(BUILD / "pyext" / build), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    return folder, env


def coverage_py(folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "coverage", *args], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def gcov_lines(tmp_path: Path) -> tuple[dict[int, int], set[int]]:
    """gcov's line -> count for the extension's C file, and its functions' declaration lines."""
    folder, env = project(tmp_path, "gcov")
    prefix = tmp_path / "gcov"
    ran = subprocess.run(["python", *PYTEST], cwd=folder, env=dict(env, GCOV_PREFIX=str(prefix)),
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines: dict[int, int] = {}
    declarations: set[int] = set()
    (gcda,) = prefix.rglob("*.gcda")
    gcda.with_suffix(".gcno").write_bytes(Path(str(gcda).replace(str(prefix), "", 1)).with_suffix(".gcno").read_bytes())
    out = subprocess.run(["gcov", "--json-format", "--stdout", gcda.name], cwd=gcda.parent, capture_output=True,
                         text=True, check=True).stdout
    for f in json.loads(out)["files"]:
        if f["file"].endswith("_native.c"):
            for line in f["lines"]:
                lines[line["line_number"]] = lines.get(line["line_number"], 0) + line["count"]
            declarations |= {fn["start_line"] for fn in f["functions"]}
    return lines, declarations


def test_coverage_py_reports_the_c_extension_as_gcov_sees_it(bpf, tmp_path):
    folder, env = project(tmp_path, "plain")
    # The Python side alone, for the oracle of the Python files.
    (tmp_path / "alone").mkdir()
    alone, _ = project(tmp_path / "alone", "plain")
    coverage_py(alone, env, "run", *PYTEST)
    python_alone = json.loads(coverage_py(alone, env, "json", "-o", "-").stdout)["files"]

    bpfcov("run", "-q", "--lines", "--libs-only", r"/geometry/_native\.", "--format", "coveragepy,json",
           "-o", folder / "bpfcov-out", "--", "python", "-m", "coverage", "run", *PYTEST, cwd=folder, env=env)
    traced = json.loads((folder / "bpfcov-out" / "coverage.json").read_text())
    assert [Path(o["path"]).name.split(".")[0] for o in traced["objects"]] == ["_native"], "only the extension"
    coverage_py(folder, env, "combine", "--append", "bpfcov-out")
    report = coverage_py(folder, env, "report").stdout
    assert re.search(r"_native\.c\s+\d+\s+\d+\s+\d+%", report), report
    files = json.loads(coverage_py(folder, env, "json", "-o", "-").stdout)["files"]

    # The Python files: as coverage.py alone reports them.
    python = {name: f for name, f in files.items() if name.endswith(".py")}
    assert {n: (f["executed_lines"], f["missing_lines"]) for n, f in python.items()} == \
        {n: (f["executed_lines"], f["missing_lines"]) for n, f in python_alone.items()}

    # The C file: gcov's executed and missing lines, bar the known differences.
    (native,) = [f for name, f in files.items() if name.endswith("_native.c")]
    ours = {n: 1 for n in native["executed_lines"]} | {n: 0 for n in native["missing_lines"]}
    expected, declarations = gcov_lines(tmp_path)
    text = Path(NATIVE).read_text().splitlines()
    both = expected.keys() & ours.keys()
    assert len(both) >= 25 and {n for n in both if ours[n] == 0}, "the suite leaves lines unexecuted"
    assert {n: (expected[n], ours[n]) for n in both if (expected[n] > 0) != (ours[n] > 0)} == {}
    assert set(expected) - set(ours) <= declarations
    assert all(re.fullmatch(r"\s*[{}]\s*;?\s*", text[n - 1]) for n in set(ours) - set(expected)), \
        [text[n - 1] for n in set(ours) - set(expected)]
    assert native["summary"]["percent_covered"] < 100
    # The other reports and --fail-under count it too.
    assert "_native.c" in coverage_py(folder, env, "xml", "-o", "-").stdout
    coverage_py(folder, env, "lcov", "-o", "coverage.lcov")
    assert f"SF:{NATIVE}" in (folder / "coverage.lcov").read_text()
    below = subprocess.run([sys.executable, "-m", "coverage", "report", "--include=*_native.c", "--fail-under=99"],
                           cwd=folder, env=env, capture_output=True, text=True)
    assert below.returncode == 2, below.stdout + below.stderr

    # coverage html renders the C file: its missed lines painted as coverage.py paints them.
    from PIL import Image
    from test_reports import browser_dump, chromium
    coverage_py(folder, env, "html", "-d", "htmlcov")
    (page,) = [p for p in (folder / "htmlcov").glob("*_native_c.html")]
    dom, _ = browser_dump(page, tmp_path)
    ellipse_body = next(i for i, line in enumerate(text, 1) if "3.141592653589793" in line)
    assert re.search(rf'<p class="mis[^"]*"><span class="n"><a id="t{ellipse_body}"', dom), \
        "the never-executed line of ellipse_area is not shown missed"
    shot = tmp_path / "native.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    missed_background = (pixels == [0xff, 0xdd, 0xdd]).all(axis=1).sum()
    assert missed_background > 5_000, "no missed line painted"


def test_coveragepy_format_needs_lines(bpf, tmp_path):
    result = bpfcov("run", "-o", tmp_path / "out", "--format", "coveragepy", "--", "true", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "bpfcov: error: --format coveragepy needs line data (coverage.py counts lines): add --lines"]


def test_libs_only_rejects_a_bad_pattern(tmp_path):
    result = bpfcov("run", "--libs-only", "(", "-o", tmp_path / "out", "--", "true", check=False)
    assert result.returncode != 0 and result.stderr.startswith("bpfcov: error: --libs-only '('")
    assert len(result.stderr.strip().splitlines()) == 1
