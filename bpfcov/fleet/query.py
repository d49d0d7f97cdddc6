"""The store's data as one coverage: what `bpfcov report URL` writes its reports from.

Each build stored becomes one object with its counts summed over the hosts and days
selected, and the fleet's facts beside them: on how many hosts each function ran, when
it first and last ran, and how many hosts watched the build for how long. A build no
selected host watched in the window is left out: nothing is known of it there.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np

from bpfcov.data import store as datafile
from bpfcov.data.model import FleetFacts, ObjectCoverage, RunCoverage
from bpfcov.data.status import Mode
from bpfcov.errors import UsageError

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Selection:
    build_id: str | None = None
    since: float | None = None     # Unix time; counts are kept per UTC day, so the day it falls in counts whole
    hosts: tuple[str, ...] = ()    # host labels; none: every host


def parse_since(text: str, now: float) -> float:
    """`30d`, `12h`, `2w`, `90m` before `now`, as a Unix time."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhdw])", text.strip())
    if not match:
        raise UsageError(f"--since {text!r}: expected a span such as 30d, 12h, 2w or 90m")
    return now - float(match.group(1)) * _UNITS[match.group(2)]


def fleet_coverage(conn, selection: Selection) -> RunCoverage:
    since = datetime.datetime.fromtimestamp(selection.since or 0, datetime.UTC)
    hosts = list(selection.hosts) or None
    run = RunCoverage(mode=Mode.COUNT, command=["bpfcov", "report", "(fleet store)"], started=0.0, ended=None,
                      host="", kernel="", lines=True)
    labels: set[str] = set()
    starts, ends = [], []
    with conn.cursor() as cur:
        cur.execute("SELECT build_key, index_data FROM builds WHERE (%s::text IS NULL OR build_id = %s) "
                    "ORDER BY path, build_key", (selection.build_id, selection.build_id))
        builds = cur.fetchall()
        for key, index_data in builds:
            cur.execute("SELECT host, mode, started, last_seen FROM watches WHERE build_key = %s "
                        "AND last_seen >= %s AND (%s::text[] IS NULL OR host = ANY(%s))", (key, since, hosts, hosts))
            watches = cur.fetchall()
            if not watches:
                continue
            obj = _static_object(bytes(index_data))
            facts = _add_counts(cur, key, since, hosts, obj)
            facts.hosts_watching = len({host for host, *_ in watches})
            facts.watched_seconds = sum(max(0.0, (last - max(started, since)).total_seconds())
                                        for _, _, started, last in watches)
            obj.fleet = facts
            run.objects.append(obj)
            run.lines = run.lines and obj.line_counts is not None
            if any(mode != Mode.COUNT for _, mode, _, _ in watches):
                run.mode = Mode.HIT
            labels.update(host for host, *_ in watches)
            starts += [started.timestamp() for _, _, started, _ in watches]
            ends += [last.timestamp() for _, _, _, last in watches]
    conn.rollback()
    if not run.lines:
        for obj in run.objects:
            obj.index.lines, obj.line_counts = None, None
    run.host = ",".join(sorted(labels))
    run.started = min(starts, default=0.0)
    run.ended = max(ends, default=None)
    return run


def _static_object(index_data: bytes) -> ObjectCoverage:
    """The build's index, as the first host to push it stored it (all counts zero)."""
    with tempfile.TemporaryDirectory(prefix="bpfcov-index-") as folder:
        path = os.path.join(folder, "index.db")
        with open(path, "wb") as f:
            f.write(index_data)
        return datafile.read(path).objects[0]


def _add_counts(cur, key: str, since, hosts, obj: ObjectCoverage) -> FleetFacts:
    day = since.date()
    n = len(obj.index.functions)
    facts = FleetFacts(hosts=np.zeros(n, dtype=np.int64), first_executed=np.zeros(n), last_executed=np.zeros(n))
    position = {f.name: i for i, f in enumerate(obj.index.functions)}
    cur.execute("SELECT name, sum(count), sum(inlined), min(first_executed), max(last_executed), "
                "count(DISTINCT host) FILTER (WHERE count > 0 OR inlined > 0) FROM function_counts "
                "WHERE build_key = %s AND day >= %s AND (%s::text[] IS NULL OR host = ANY(%s)) GROUP BY name",
                (key, day, hosts, hosts))
    for name, count, inlined, first, last, ran_on in cur:
        i = position.get(name)
        if i is None:
            facts.unknown_functions += 1  # pushed by a host whose index had it; the stored one does not
            continue
        obj.function_counts[i] = count
        obj.inlined_counts[i] = inlined  # type: ignore[index]  # _static_object made it
        facts.hosts[i] = ran_on
        facts.first_executed[i] = first.timestamp() if first else 0.0
        facts.last_executed[i] = last.timestamp() if last else 0.0
    if obj.line_counts is not None and obj.index.lines is not None:
        cur.execute("SELECT address, sum(count) FROM line_counts WHERE build_key = %s AND day >= %s "
                    "AND (%s::text[] IS NULL OR host = ANY(%s)) GROUP BY address", (key, day, hosts, hosts))
        rows = cur.fetchall()
        if rows:
            addresses = np.array([a for a, _ in rows], dtype=np.uint64)
            counts = np.array([c for _, c in rows], dtype=np.int64)
            where = np.minimum(np.searchsorted(obj.index.lines.address, addresses), len(obj.line_counts) - 1)
            known = obj.index.lines.address[where] == addresses
            obj.line_counts[where[known]] = counts[known]
    return facts
