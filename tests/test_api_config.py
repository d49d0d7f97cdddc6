"""The library interface, the configuration file, the reporter registry and the one rule
for "executed": fast tests on data files made from real sample binaries, no BPF needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import bpfcov as bpfcov_cli
from conftest import target

import bpfcov
from bpfcov.data import store
from bpfcov.data.merge import diff
from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.data.status import Status
from bpfcov.errors import BpfcovError
from bpfcov.probes.index import index_object
from bpfcov.report.formats import REPORTERS, parse_formats


def _run(counts: dict[str, int], lines: bool = False, line_counts: dict[str, int] | None = None) -> RunCoverage:
    """A run of the shapes sample with the given entry counts (and line counts, by function)."""
    index = index_object(target("O0", "shapes"), lines=lines, quiet=True)
    names = [f.name for f in index.functions]
    fcounts = np.array([counts.get(n, 0) for n in names], dtype=np.int64)
    lcounts = None
    if lines:
        owner = index.lines.function
        lcounts = np.array([(line_counts or {}).get(names[o], 0) for o in owner], dtype=np.int64)
    return RunCoverage(mode="count", command=["shapes"], started=0.0, ended=1.0, host="h", kernel="k", lines=lines,
                       objects=[ObjectCoverage(index, fcounts, lcounts)])


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "bpfcov.db"
    store.write(str(path), _run({"main": 1, "factorial": 6}))
    return path


def test_load_gives_the_totals_and_functions_of_coverage_json(data_file, tmp_path):
    coverage = bpfcov.load(str(data_file))
    assert coverage.totals["functions_hit"] == 2
    functions = {f["name"]: f for f in coverage.functions()}
    assert functions["factorial"]["count"] == 6 and functions["factorial"]["status"] == "hit"
    assert functions["triangle_area"]["status"] == "unhit"
    written = coverage.write(str(tmp_path / "out"), formats=("lcov", "json"))
    assert [p.rsplit("/", 1)[1] for p in written] == ["coverage.info", "coverage.json"]
    assert json.loads((tmp_path / "out/coverage.json").read_text())["totals"] == coverage.totals


def test_merge_sums_counts(data_file):
    merged = bpfcov.load(str(data_file)).merge(bpfcov.load(str(data_file)))
    assert {f["name"]: f["count"] for f in merged.functions()}["factorial"] == 12


def test_an_executed_line_makes_its_function_executed_everywhere():
    """Entry not counted (probed late) but a line inside ran: executed for reports and diff."""
    before = _run({"main": 1})
    after = _run({"main": 1}, lines=True, line_counts={"circle_area": 3})
    obj = after.objects[0]
    i = next(i for i, f in enumerate(obj.index.functions) if f.name == "circle_area")
    assert obj.function_status(i) is Status.HIT and obj.function_count(i) == 3
    assert [c.name for c in diff(before, after).newly_executed] == ["circle_area"]
    report = {f["name"]: f for f in bpfcov.Coverage(after).functions()}
    assert report["circle_area"]["status"] == "hit" and report["circle_area"]["count"] == 3


def test_a_counted_entry_keeps_its_call_count_whatever_its_lines_say():
    run = _run({"factorial": 2}, lines=True, line_counts={"factorial": 40})
    assert {f["name"]: f["count"] for f in bpfcov.Coverage(run).functions()}["factorial"] == 2


def test_every_reporter_has_one_shape_and_unknown_formats_are_refused():
    assert set(REPORTERS) >= {"lcov", "html", "json", "cobertura"}
    for name, reporter in REPORTERS.items():
        assert reporter.name == name and reporter.file_name and reporter.help
    with pytest.raises(BpfcovError, match="unknown report format xml"):
        parse_formats("lcov,xml")


def test_the_config_file_sets_options_and_the_command_line_wins(data_file, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[tool.bpfcov]\nformat = "lcov"\nexclude = ["^main$"]\n')
    bpfcov_cli("report", data_file, "-o", "out", cwd=folder)
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["coverage.info"]
    lcov = (folder / "out/coverage.info").read_text()
    assert "FN:" in lcov and ",main\n" not in lcov
    bpfcov_cli("report", data_file, "-o", "out2", "--format", "json", cwd=folder)
    assert sorted(p.name for p in (folder / "out2").iterdir()) == ["coverage.json"]


def test_bpfcov_toml_is_read_and_a_misspelled_key_is_named(data_file, tmp_path):
    (tmp_path / ".bpfcov.toml").write_text('formt = "lcov"\n')
    result = bpfcov_cli("report", data_file, "-o", "out", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unknown key 'formt'" in result.stderr
    (tmp_path / ".bpfcov.toml").write_text('fail-under = "high"\n')
    result = bpfcov_cli("report", data_file, "-o", "out", cwd=tmp_path, check=False)
    assert "fail-under must be a number from 0 to 100" in result.stderr
    (tmp_path / ".bpfcov.toml").write_text('fail-under = 90\n')
    assert bpfcov_cli("report", data_file, "-o", "out", cwd=tmp_path, check=False).returncode == 2
    (tmp_path / ".bpfcov.toml").write_text('format = [lcov\n')
    result = bpfcov_cli("report", data_file, "-o", "out", cwd=tmp_path, check=False)
    assert "not valid TOML" in result.stderr and "Traceback" not in result.stderr
