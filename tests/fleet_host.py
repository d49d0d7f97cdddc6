"""A simulated host of a fleet, for tests/test_fleet.py: `python tests/fleet_host.py URL
LABEL DATA OUT STEPS`.

It replays a real run's data file (DATA) as a run that grows: at step k of STEPS its
totals are k times DATA's counts. Each step goes the way a tracing bpfcov's --interval
snapshot does (commands/tracing.py): stamped, written to OUT/bpfcov.db, then queued for
the store; the last step closes the run. So OUT/bpfcov.db is, at every moment, what the
host would report on its own, and the store must come to hold exactly that.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from bpfcov.data import store
from bpfcov.data.model import ObjectCoverage
from bpfcov.fleet.connection import parse_store_url
from bpfcov.fleet.push import Pusher


def scaled(obj: ObjectCoverage, k: int) -> ObjectCoverage:
    lines = None if obj.line_counts is None else np.asarray(obj.line_counts, dtype=np.int64) * k
    return ObjectCoverage(obj.index, np.asarray(obj.function_counts, dtype=np.int64) * k, lines,
                          obj.inlined() * k, obj.first_hit_ns())


def main(url: str, label: str, data: str, out: str, steps: int) -> None:
    base = store.read(data)
    os.makedirs(out, exist_ok=True)
    pusher = Pusher(parse_store_url(url), label)  # its warnings show the retries
    pusher.check()
    pusher.start()
    local = os.path.join(out, "bpfcov.db")
    started = time.time()
    for k in range(1, steps + 1):
        run = dataclasses.replace(base, objects=[scaled(o, k) for o in base.objects], started=started,
                                  host=label, stats={})
        key = pusher.stamp(run)
        store.write(local, run)
        if k < steps:
            pusher.push(run, key)
            print(f"step {k}", flush=True)
            time.sleep(0.05)
        else:
            pusher.close(run, key, timeout=120)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
