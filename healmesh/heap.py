"""Garbage-collector tuning for serving processes (scorers and gateway workers alike)."""

from __future__ import annotations

import gc

# Collector thresholds for serving processes (CPython's default is 700, 10, 10).
GC_THRESHOLDS = (50_000, 50, 1_000)


def freeze_heap() -> None:
    """Keep the garbage collector from stalling the event loop.

    A serving process holds millions of long-lived objects (bentoml, pandas, mlflow, the model).
    ``gc.freeze`` moves everything allocated at start-up out of the collector's view (as
    Instagram does), and larger thresholds make collections of the short-lived request objects
    rare. Measured on the XGBoost scorer, 64 clients, 30 s: p99 153 ms and 2,190 req/s with the
    defaults; 34 ms and 2,800 req/s frozen with these thresholds (44 ms with gc off entirely)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
