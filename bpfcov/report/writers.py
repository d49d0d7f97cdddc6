"""The one place that writes report files, whatever the format.

Each format is a Reporter (report/formats/) that writes one stream (lcov, JSON, Cobertura)
or a folder (HTML). This module owns the files: it creates the output folder,
writes each file under a temporary name and renames it into place (a reader never sees
half a report; a failure leaves the previous one), and says what it wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from bpfcov.errors import BpfcovError
from bpfcov.report.formats import REPORTERS
from bpfcov.report.model import Report
from bpfcov.report.reporter import WriteContext
from bpfcov.report.sources import SourceReader


def _write_path(path: str, render) -> None:
    """`render(tmp)` writes a file at the fresh name `tmp` beside `path`, which is renamed
    into place once whole, or removed if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".bpfcov-", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)  # the renderer creates it: a database library will not take an empty file
    try:
        render(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_file(path: str, render) -> None:
    """`render(out)` writes a text stream, put into place as _write_path does."""
    def to_stream(tmp: str) -> None:
        with open(tmp, "x", encoding="utf-8", newline="\n") as out:
            render(out)
    _write_path(path, to_stream)


def _write_folder(path: str, render) -> None:
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".bpfcov-html-")
    try:
        render(tmp)
        os.chmod(tmp, 0o755)
        if os.path.isdir(path):
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_reports(report: Report, out_dir: str, formats: list[str], source_root: str | None = None,
                  lcov_format: int = 1, debuginfod_sources: bool = False) -> list[str]:
    """Write each requested format into `out_dir`; return the paths written."""
    context = WriteContext(SourceReader(source_root, debuginfod_sources), lcov_format)
    written = []
    try:
        os.makedirs(out_dir, exist_ok=True)
        for name in formats:
            reporter = REPORTERS[name]
            path = os.path.join(out_dir, reporter.file_name)
            if reporter.folder:
                _write_folder(path, lambda folder, r=reporter: r.write(report, folder, context))
                index = os.path.join(path, "index.html")
                written.append(index if os.path.exists(index) else path)
            elif reporter.writes_path:
                _write_path(path, lambda out, r=reporter: r.write(report, out, context))
                written.append(path)
            else:
                _write_file(path, lambda out, r=reporter: r.write(report, out, context))
                written.append(path)
    except OSError as e:
        raise BpfcovError(f"cannot write reports to {out_dir}: {e.strerror or e}") from None
    return written
