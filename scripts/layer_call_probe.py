"""Is a decode-sized layer call bound by its compute or by cold caches? Times layer_0 (T = 1, pos 20)
back to back (its weights and the runtime's state stay in cache) and after each call a sweep of a
buffer larger than the last-level cache (what the other 24 calls of a decode step do to it).
Usage: python scripts/layer_call_probe.py ARTIFACT BACKEND [--calls 300] [--sweep-mb 64]; one JSON line.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.kv import attention_mask, rope_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("backend")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--sweep-mb", type=int, default=64)
    a = ap.parse_args()
    m = json.loads((a.artifact / "manifest.json").read_text())
    cfg, part = m["model"], m["backends"][a.backend]["backbone"]["parts"]["layer_0"]
    kv, hd, pos0 = cfg["n_kv_heads"], cfg["head_dim"], 20
    cos, sin = rope_rows(hd, cfg["max_seq_len"], cfg["rope_theta"])
    past = np.zeros((pos0, kv, hd), np.float32)
    inputs = [np.random.default_rng(0).standard_normal((1, cfg["dim"])).astype(np.float32),
              cos[pos0:pos0 + 1], sin[pos0:pos0 + 1], past, past, attention_mask(pos0, 1, cfg["n_heads"] // kv)]
    prog = open_program(a.backend, a.artifact / part["path"], [part["method"]])
    sweep = np.ones(a.sweep_mb << 18, np.float32)

    def median_us(cold: bool) -> float:
        times = []
        for _ in range(a.calls):
            if cold:
                np.add(sweep, 1.0, out=sweep)  # reads and writes every line: the layer's weights leave L2 and L3
            t = time.perf_counter_ns()
            prog.run(part["method"], inputs)
            times.append(time.perf_counter_ns() - t)
        return statistics.median(times[a.calls // 10:]) / 1e3

    warm, cold = median_us(False), median_us(True)
    prog.release()
    print(json.dumps({"backend": a.backend, "layer_file_bytes": (a.artifact / part["path"]).stat().st_size,
                      "warm_us": round(warm, 1), "after_sweep_us": round(cold, 1),
                      "cold_over_warm": round(cold / warm, 2), "sweep_mb": a.sweep_mb}))


if __name__ == "__main__":
    main()
