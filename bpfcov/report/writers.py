"""The one place that writes report files, whatever the format.

Each format is a Reporter (report/formats/) that writes one stream (lcov, JSON, Cobertura)
or a folder (HTML). This module owns the files: it creates the output folder,
writes each file under a temporary name and renames it into place (a reader never sees
half a report; a failure leaves the previous one), and says what it wrote.

A big report's time is its parts (the HTML report's source pages and index, each other
format) and the pruning plans. With a second CPU, each part is written by a forked child,
and those that do not show the plans are written while this process makes them.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

from bpfcov.errors import BpfcovError
from bpfcov.gcpause import gc_paused
from bpfcov.parallel import side_by_side
from bpfcov.report.formats import REPORTERS
from bpfcov.report.model import Report
from bpfcov.report.pipeline import add_plans
from bpfcov.report.reporter import Part, WriteContext
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


def _new_folder(path: str) -> str:
    """A fresh temporary folder beside `path`, to write a folder format into."""
    return tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".bpfcov-{os.path.basename(path)}-")


def _put_folder(tmp: str, path: str) -> None:
    """Put the finished folder `tmp` in place of `path` (and of whatever was there)."""
    os.chmod(tmp, 0o755)
    if os.path.isdir(path):
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def _folder_shown(path: str) -> str:
    """What to show for a folder written: its index page when it has one."""
    index = os.path.join(path, "index.html")
    return index if os.path.exists(index) else path


def _write_stream(report: Report, path: str, name: str, context: WriteContext) -> None:
    """Write the format `name`, which is one file, at `path`."""
    reporter = REPORTERS[name]
    if reporter.writes_path:
        _write_path(path, lambda out: reporter.write(report, out, context))
    else:
        _write_file(path, lambda out: reporter.write(report, out, context))


@gc_paused()
def write_reports(report: Report, out_dir: str, formats: list[str], source_root: str | None = None,
                  lcov_format: int = 1, debuginfod_sources: bool = False) -> list[str]:
    """Write each requested format into `out_dir`; return the paths written, in the order
    of `formats`. A report whose pruning plans are still to be made (build_report's
    `plans_later`) gets them here, while the parts that do not show them are written."""
    context = WriteContext(SourceReader(source_root, debuginfod_sources), lcov_format)
    paths = {name: os.path.join(out_dir, REPORTERS[name].file_name) for name in formats}
    temporary: dict[str, str] = {}  # folder format -> the folder it is written into
    try:
        os.makedirs(out_dir, exist_ok=True)
        parts: list[Part] = []
        for name in formats:
            reporter = REPORTERS[name]
            if reporter.folder:
                temporary[name] = _new_folder(paths[name])
                parts += reporter.parts(report, temporary[name], context)
            else:
                parts.append(Part(f"writing {reporter.file_name}", reporter.needs_plan,
                                  functools.partial(_write_stream, report, paths[name], name, context)))
        # Each part is written beside this process, which makes the plans meanwhile and
        # writes the last part that shows them (bpfcov/parallel.py).
        with side_by_side() as children:
            for part in parts:
                if not part.needs_plan:
                    children.start(part.name, part.work)
            shown = [part for part in parts if part.needs_plan]
            if shown:
                add_plans(report)
                for part in shown[:-1]:
                    children.start(part.name, part.work)
                shown[-1].work()
        for name, tmp in list(temporary.items()):
            _put_folder(tmp, paths[name])
            del temporary[name]
    except OSError as e:
        raise BpfcovError(f"cannot write reports to {out_dir}: {e.strerror or e}") from None
    finally:
        for tmp in temporary.values():  # not put in place: a format failed
            shutil.rmtree(tmp, ignore_errors=True)
    return [_folder_shown(paths[n]) if REPORTERS[n].folder else paths[n] for n in formats]
