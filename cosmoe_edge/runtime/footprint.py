"""What a loaded expert really costs in resident memory, per backend: the program's file bytes
are not it (XNNPACK and onnxruntime repack weights; ExecuTorch plans activation memory). The exporter
runs this in a fresh process and charges each expert its measured share in the manifest, so memory
budgets hold for RSS, not just for file sizes.

Usage: python -m cosmoe_edge.runtime.footprint ARTIFACT BACKEND   (prints JSON)
"""

import gc
import json
import sys
from pathlib import Path

import numpy as np

from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.manifest import backend_section, check_file, load_manifest
from cosmoe_edge.runtime.metrics import release_heap, rss_bytes


def measure(artifact: Path, backend: str) -> dict:
    m = load_manifest(artifact)
    experts = backend_section(m, backend)["experts"]
    x = np.zeros((1, m["model"]["dim"]), np.float32)

    def load(entry):
        p = open_program(backend, check_file(artifact, entry, False), ["forward"], expert=True)
        p.run("forward", [x])  # first run: lazily allocated buffers count too
        return p

    load(experts[0]).release()  # the first load initialises the backend's libraries
    gc.collect()
    release_heap()
    before = rss_bytes()
    programs = [load(e) for e in experts]
    loaded = rss_bytes()
    for p in programs:
        p.release()
    programs.clear()
    gc.collect()
    released = rss_bytes()
    release_heap()
    trimmed = rss_bytes()
    files = sum(e["bytes"] for e in experts)
    return {"backend": backend, "experts": len(experts), "file_bytes": files, "rss_loaded": loaded - before,
            "rss_per_file_byte": (loaded - before) / files, "rss_after_release": released - before,
            "rss_after_malloc_trim": trimmed - before}


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2])))
