"""What every bench section reports of repeated runs: median, min, max and how many."""

from __future__ import annotations

import statistics


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}
