"""What an expert miss costs, per approach and backend, measured in one process with the approaches
interleaved (this machine is noisy: ratios taken in one run hold, absolute figures drift), then decode
speed at 25% of the experts' bytes against all resident, each in a fresh edge-run process. Written
between the miss-cost markers of docs/RUNTIME.md, with the raw figures in docs/bench/miss_cost.json.

Miss cost = load (open/map, or create the program) + the first call - a warm call: what a use costs
beyond a hit. Cold: the expert's file dropped from the page cache first (posix_fadvise). The goal it is
checked against: 2x reading the file's bytes from the page cache + 0.1 ms.

Usage: python scripts/miss_cost.py INT4_ARTIFACT INT8_ARTIFACT [--rounds 60] [--tokens 96]
  INT4_ARTIFACT: edge-export MODEL --quant int4 (both backends: experts as programs)
  INT8_ARTIFACT: edge-export MODEL --quant int8 --backend onnx (ONNX experts in the weights form)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from doc_figures import write_between_markers  # noqa: E402

from cosmoe_edge.runtime.backends import import_runtime  # noqa: E402
from cosmoe_edge.runtime.cli import command  # noqa: E402
from cosmoe_edge.runtime.manifest import backend_section, load_manifest  # noqa: E402
from cosmoe_edge.runtime.metrics import drop_page_cache  # noqa: E402
from cosmoe_edge.runtime.options import RunOptions  # noqa: E402
from cosmoe_edge.runtime.store import ExpertStore  # noqa: E402

PROMPT = "The list type is"


def ns() -> int:
    return time.perf_counter_ns()


class Approach:
    def __init__(self, name: str, artifact: Path, backend: str):
        self.name, self.artifact, self.backend = name, artifact, backend
        m = load_manifest(artifact)
        self.section = backend_section(m, backend)
        import_runtime(backend)
        self.store = ExpertStore(artifact, backend, self.section, verify_sha=False, threads=1)
        self.keys = sorted(self.store.entries)
        self.x = np.random.default_rng(0).standard_normal((1, m["model"]["dim"])).astype(np.float32)
        self.samples = {k: [] for k in ("read_warm", "read_cold", "miss_warm", "miss_cold", "call", "promote")}

    def path(self, key) -> Path:
        return self.artifact / self.store.entries[key]["path"]

    def read(self, key) -> int:
        t = ns()
        with open(self.path(key), "rb", buffering=0) as f:
            f.read()
        return ns() - t

    def miss(self, key) -> tuple[int, int]:
        """(load + first call, warm call) in ns."""
        t = ns()
        p = self.store.load(key)
        p.run("forward", [self.x])
        first = ns() - t
        t = ns()
        p.run("forward", [self.x])
        warm = ns() - t
        if getattr(p, "promotable", False):
            t = ns()
            self.store.promote(p)
            self.samples["promote"].append(ns() - t)
        p.release()
        return first, warm

    def round(self, i: int):
        key = self.keys[i % len(self.keys)]
        s = self.samples
        self.read(key)  # in the page cache for sure: the next read is the warm one
        s["read_warm"].append(self.read(key))
        first, warm = self.miss(key)
        s["miss_warm"].append(first - warm)
        s["call"].append(warm)
        drop_page_cache([self.path(key)])
        s["read_cold"].append(self.read(key))
        drop_page_cache([self.path(key)])
        first, warm = self.miss(key)
        s["miss_cold"].append(first - warm)

    def summary(self) -> dict:
        fp = self.section.get("footprint", {})
        out = {k: statistics.median(v) / 1e3 for k, v in self.samples.items() if v}
        out |= {"file_bytes": statistics.mean(e["bytes"] for e in self.section["experts"]),
                "rss_per_file_byte": fp.get("rss_per_file_byte"),
                "promoted_rss_per_file_byte": fp.get("promoted_rss_per_file_byte"),
                "promote_after": self.section.get("promote_after")}
        out["goal_us"] = 2 * out["read_warm"] + 100
        return out


def decode(artifact: Path, backend: str, budget: str, tokens: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            report = Path(d) / "r.json"
            cmd = command(artifact, RunOptions(prompt=PROMPT, max_new_tokens=tokens, backend=backend,
                                               memory_budget=budget), report=report)
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"edge-run failed: {p.stderr.strip().splitlines()[-1]}")
            runs.append(json.loads(report.read_text()))
    return {"decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
            "budget_bytes": runs[0]["memory_budget_bytes"],
            "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in runs),
            "hit_rate": statistics.median(r["expert_hit_rate"] for r in runs),
            "switch_rate": runs[0]["expert_switch_rate"], "text": runs[0]["text"]}


BUDGETS = ("all", "25%", "12.5%")


def table(res: dict) -> str:
    lines = ["| approach | backend | file KB | read us (cache / cold) | miss us warm (alone) | miss us cold | goal us "
             "| RSS / file bytes | call us T=1 | decode tok/s all | 25% (ratio) | 12.5% (ratio) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["approaches"].items():
        rss = f"{r['rss_per_file_byte']:.2f}" if r["rss_per_file_byte"] else "-"
        if r.get("promoted_rss_per_file_byte"):
            rss += f" ({r['promoted_rss_per_file_byte']:.2f} promoted)"
        d = r["decode"]
        full = d["all"]["decode_tokens_per_s"]
        at = [f"{d[b]['decode_tokens_per_s']:.0f} ({d[b]['decode_tokens_per_s'] / full:.2f}, "
              f"{d[b]['budget_bytes'] / 1e6:.1f} MB)" for b in BUDGETS[1:]]
        lines.append(f"| {name.rsplit(' ', 1)[0]} | {r['backend']} | {r['file_bytes'] / 1e3:.0f} | "
                     f"{r['read_warm']:.0f} / {r['read_cold']:.0f} | **{r['miss_warm']:.0f}** ({r['miss_warm_alone']:.0f}) "
                     f"| {r['miss_cold']:.0f} | {r['goal_us']:.0f} | {rss} | {r['call']:.0f} | {full:.0f} | {at[0]} | {at[1]} |")
    promo = [f"{r['promote']:.0f} us, paid back after {r['promote_after']} uses" for r in res["approaches"].values()
             if "promote" in r]
    same = res.get("same_bytes")
    lines += ["", f"Medians of {res['rounds']} misses per approach, interleaved in one process (alone: the same "
              "approach's misses back to back, after the interleaved rounds); decode: median of "
              f"{res['repeats']} edge-run processes, {res['tokens']} greedy tokens, nextuse policy, model "
              f"`{res['model']}`; {res['machine']}. A budget's percentage is of all experts' bytes at full speed "
              "(the weights form: promoted), so the MB differ between rows. Promotion of a hot expert to a session "
              "of its own (not a miss: the runtime does it when the budget has room without evicting): "
              + "; ".join(promo) + "."]
    if same:
        lines.append(f"The weights form at the int4 ONNX program's 25% bytes ({same['budget_bytes'] / 1e6:.1f} MB): "
                     f"{same['decode_tokens_per_s']:.0f} tok/s, hit rate {same['hit_rate']:.0%}.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("int4", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("docs/bench/miss_cost.json"))
    ap.add_argument("--doc", type=Path, default=Path("docs/RUNTIME.md"))
    a = ap.parse_args()
    approaches = [Approach("program (int4)", a.int4, "executorch"), Approach("program (int4)", a.int4, "onnx"),
                  Approach("weights form (int8)", a.int8, "onnx")]
    for i in range(a.rounds):
        for ap_ in approaches:
            ap_.round(i)
    alone = {}
    for ap_ in approaches:  # each approach's misses back to back: no other runtime's work between them
        warm = []
        for i in range(a.rounds):
            first, call = ap_.miss(ap_.keys[i % len(ap_.keys)])
            warm.append(first - call)
        alone[f"{ap_.name} {ap_.backend}"] = statistics.median(warm) / 1e3
    res = {"rounds": a.rounds, "tokens": a.tokens, "repeats": a.repeats,
           "model": load_manifest(a.int4).get("source", {}).get("checkpoint", a.int4.name),
           "machine": f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", "approaches": {}}
    for ap_ in approaches:
        r = ap_.summary() | {"backend": ap_.backend, "miss_warm_alone": alone[f"{ap_.name} {ap_.backend}"]}
        r["decode"] = {b: decode(ap_.artifact, ap_.backend, b, a.tokens, a.repeats) for b in BUDGETS}
        res["approaches"][f"{ap_.name} {ap_.backend}"] = r
        print(f"{ap_.name} {ap_.backend}: miss {r['miss_warm']:.0f} us warm, {r['miss_cold']:.0f} us cold "
              f"(goal {r['goal_us']:.0f}); decode " + " -> ".join(f"{r['decode'][b]['decode_tokens_per_s']:.0f}"
                                                                  for b in BUDGETS) + " tok/s at " + ", ".join(BUDGETS))
    onnx_25 = res["approaches"]["program (int4) onnx"]["decode"]["25%"]["budget_bytes"]
    res["same_bytes"] = decode(a.int8, "onnx", str(onnx_25), a.tokens, a.repeats)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1))
    write_between_markers(a.doc, table(res), "miss-cost", "### What a miss costs, per approach")
    print(f"wrote {a.json} and the miss-cost table in {a.doc}")


if __name__ == "__main__":
    main()
