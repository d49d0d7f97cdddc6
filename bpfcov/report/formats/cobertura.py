"""coverage.xml in Cobertura's format, for GitLab and Jenkins.

GitLab reads at most 10 MiB and 100 <source> nodes: bpfcov writes one <source> (the
--relative-to root, or "/"), one <package> per source directory, one <class> per file.
"""

from __future__ import annotations

import os
import re
import time

from bpfcov.report.model import Report
from bpfcov.report.reporter import Reporter, WriteContext

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# xml.sax.saxutils would do this too, but importing it imports urllib and http: every
# report (the registry imports each format) paid 35 ms for it.
_IN_ATTRIBUTE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                               "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


def quoteattr(value: str) -> str:
    """An XML attribute value, in double quotes; characters XML cannot carry at all become '?'."""
    return '"' + _NOT_XML.sub("?", value).translate(_IN_ATTRIBUTE) + '"'


def _rate(hit: int, total: int) -> str:
    return f"{hit / total:.4f}" if total else "1.0000"


def write(report: Report, out) -> None:
    t = report.totals
    out.write('<?xml version="1.0" ?>\n')
    out.write('<!DOCTYPE coverage SYSTEM "http://cobertura.sourceforge.net/xml/coverage-04.dtd">\n')
    out.write(f'<coverage line-rate="{_rate(t.lines_hit, t.lines)}" branch-rate="0" '
              f'lines-covered="{t.lines_hit}" lines-valid="{t.lines}" branches-covered="0" '
              f'branches-valid="0" complexity="0" version="bpfcov {report.bpfcov_version}" '
              f'timestamp="{int(report.started or time.time())}">\n')
    out.write("  <sources>\n    <source>.</source>\n  </sources>\n  <packages>\n")
    packages: dict[str, list] = {}
    for source in report.files:
        packages.setdefault(os.path.dirname(source.path) or ".", []).append(source)
    for package, files in sorted(packages.items()):
        hit = sum(sum(1 for c in f.lines.values() if c > 0) for f in files)
        total = sum(len(f.lines) for f in files)
        out.write(f'    <package name={quoteattr(package)} line-rate="{_rate(hit, total)}" '
                  f'branch-rate="0" complexity="0">\n      <classes>\n')
        for f in files:
            fhit = sum(1 for c in f.lines.values() if c > 0)
            out.write(f'        <class name={quoteattr(os.path.basename(f.path))} filename={quoteattr(f.path)} '
                      f'line-rate="{_rate(fhit, len(f.lines))}" branch-rate="0" complexity="0">\n')
            out.write("          <methods>\n")
            for fn in f.functions:
                mhit = 1 if fn.count > 0 else 0
                out.write(f'            <method name={quoteattr(fn.display_name)} signature={quoteattr(fn.name)} '
                          f'line-rate="{mhit}.0" branch-rate="0" complexity="0">\n')
                out.write(f'              <lines><line number="{fn.line}" hits="{fn.count}" branch="false"/></lines>\n')
                out.write("            </method>\n")
            out.write("          </methods>\n          <lines>\n")
            for line in sorted(f.lines):
                out.write(f'            <line number="{line}" hits="{f.lines[line]}" branch="false"/>\n')
            out.write("          </lines>\n        </class>\n")
        out.write("      </classes>\n    </package>\n")
    out.write("  </packages>\n</coverage>\n")


class CoberturaReporter(Reporter):
    name = "cobertura"
    file_name = "coverage.xml"
    needs_plan = False
    help = "Cobertura XML for GitLab and Jenkins"

    def write(self, report: Report, out, context: WriteContext) -> None:
        write(report, out)
