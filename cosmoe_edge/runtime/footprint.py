"""What a loaded expert really costs in resident memory, per backend: the program's file bytes
are not it (XNNPACK and onnxruntime repack weights; ExecuTorch plans activation memory). The exporter
runs this in a fresh process and charges each expert its measured share in the manifest, so memory
budgets hold for RSS, not just for file sizes. For ONNX experts in the weights form it also measures
them promoted to sessions of their own, and when promotion pays.

Usage: python -m cosmoe_edge.runtime.footprint ARTIFACT BACKEND   (prints JSON)
"""

import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cosmoe_edge.runtime.backends import import_runtime
from cosmoe_edge.runtime.manifest import backend_section, load_manifest
from cosmoe_edge.runtime.metrics import release_heap, rss_bytes
from cosmoe_edge.runtime.store import ExpertStore


def measure(artifact: Path, backend: str) -> dict:
    m = load_manifest(artifact)
    section = backend_section(m, backend)
    experts = section["experts"]
    x = np.zeros((1, m["model"]["dim"]), np.float32)
    import_runtime(backend)
    store = ExpertStore(artifact, backend, section, verify_sha=False, threads=1)

    def load(entry):
        p = store.load((entry["layer"], entry["expert"]))
        p.run("forward", [x])  # first run: lazily allocated buffers (and mapped pages) count too
        return p

    load(experts[0]).release()  # the first load initialises the backend's libraries
    gc.collect()
    release_heap()
    before = rss_bytes()
    programs = [load(e) for e in experts]
    loaded = rss_bytes()
    files = sum(e["bytes"] for e in experts)
    out = {"backend": backend, "experts": len(experts), "file_bytes": files, "rss_loaded": loaded - before,
           "rss_per_file_byte": (loaded - before) / files}
    if store.slot is not None:
        out |= promotion(store, programs, x, before, files)
    for p in programs:
        p.release()
    programs.clear()
    gc.collect()
    released = rss_bytes()
    release_heap()
    trimmed = rss_bytes()
    return out | {"rss_after_release": released - before, "rss_after_malloc_trim": trimmed - before}


def promotion(store, programs, x, before: int, files: int) -> dict:
    """The weights form: what promoting every expert costs in RSS, and after how many uses a promotion pays
    for itself (its creation time over what each call saves: ski rental, within 2x of the best choice)."""
    calls = lambda p: statistics.median(timed(lambda: p.run("forward", [x])) for _ in range(30))  # noqa: E731
    slot = statistics.median(calls(p) for p in programs[:4])
    create = [timed(lambda p=p: store.promote(p)) for p in programs]
    for p in programs:
        p.run("forward", [x])
    gc.collect()
    promoted = rss_bytes()
    const = statistics.median(calls(p) for p in programs[:4])
    create_ns = statistics.median(create)
    return {"rss_promoted": promoted - before, "promoted_rss_per_file_byte": (promoted - before) / files,
            "slot_call_us": slot / 1e3, "own_session_call_us": const / 1e3, "promote_us": create_ns / 1e3,
            "promote_after": max(1, math.ceil(create_ns / max(slot - const, 1000)))}


def timed(f) -> int:
    t = time.perf_counter_ns()
    f()
    return time.perf_counter_ns() - t


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2])))
