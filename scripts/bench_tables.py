"""Markdown tables of an edge-bench run (its results.json), written between the figure markers of
docs/BENCHMARKS.md with links to the run's plots.
Usage: python scripts/bench_tables.py [docs/bench] [--out docs/BENCHMARKS.md] [--marker figures]
"""

import argparse
import json
import os
from pathlib import Path

from doc_figures import write_between_markers

BUDGETS = ["all", "100%", "50%", "25%", "12.5%"]


def variant(r) -> str:
    return r["policy"] + ("+prefetch" if r.get("prefetch") else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path, nargs="?", default=Path("docs/bench"))
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    ap.add_argument("--marker", default="figures", help="the <!-- NAME:start/end --> block to write")
    a = ap.parse_args()
    d = json.loads((a.results / "results.json").read_text())
    hw, rows = d["machine"], [r for r in d["rows"] if "decode_tokens_per_s" in r]
    cold = "cold (page cache dropped before each run)" if any(r.get("cold") for r in rows) else "warm"
    first = rows[0]
    lines = [f"Measured {hw['date']} on {hw['cpu']} ({hw['cores']} cores): memory {hw['memory_gbps']:.1f} GB/s, "
             f"storage {hw['storage_gbps']:.2f} GB/s (O_DIRECT), int4 {hw['int4_gops']:.0f} GOPS (one thread). "
             f"{first['runs']} runs per configuration (median, [min-max] in results.csv), "
             f"{first['generated_tokens']} new tokens, {cold}.", ""]
    eager = [r for r in rows if r["policy"] == "eager"]
    if eager:
        lines += [f"Eager PyTorch fp32 (same prompt, same run): {eager[0]['decode_tokens_per_s']:.0f} tok/s.", ""]

    groups = {}
    for r in rows:
        if r["policy"] == "eager":
            continue
        key = (Path(r["artifact"]).name, r["backend"] + (f":{r['engine']}" if r.get("engine") else ""))
        groups.setdefault(key, {}).setdefault(variant(r), {})[r["budget"]] = r
    lines += ["### Decode tokens/s by expert budget (ratio to all experts resident)", "",
              "| artifact / backend:engine | policy | " + " | ".join(BUDGETS) + " | no cache |",
              "|---|---|" + "---|" * (len(BUDGETS) + 1)]
    for (art, backend), variants in groups.items():
        full = variants.get("lru", {}).get("all", {}).get("decode_tokens_per_s")
        floor = variants.get("none", {}).get("all", {})
        for v, by_budget in variants.items():
            if v == "none":
                continue
            cells = []
            for b in BUDGETS:
                r = by_budget.get(b)
                cells.append(f"{r['decode_tokens_per_s']:.0f} ({r['decode_tokens_per_s'] / full:.2f})" if r and full
                             else "")
            nc = (f"{floor['decode_tokens_per_s']:.0f} ({floor['decode_tokens_per_s'] / full:.2f})"
                  if floor and full and v == "lru" else "")
            lines.append(f"| {art} / {backend} | {v} | " + " | ".join(cells) + f" | {nc} |")

    lines += ["", "### Expert cache hit rate, misses per decoded token, peak RSS (lru, no prefetch)", "",
              "| artifact / backend:engine | " + " | ".join(BUDGETS[1:]) + " |", "|---|" + "---|" * (len(BUDGETS) - 1)]
    for (art, backend), variants in groups.items():
        cells = []
        for b in BUDGETS[1:]:
            r = variants.get("lru", {}).get(b)
            cells.append(f"{r['expert_hit_rate']:.0%}, {r['expert_misses_decode'] / max(1, r['generated_tokens'] - 1):.2f}"
                         f"/tok, {r['peak_rss_bytes'] / 1e6:.0f} MB" if r else "")
        lines.append(f"| {art} / {backend} | " + " | ".join(cells) + " |")

    devices = [dv["name"] for dv in d.get("devices", [])]
    if devices:
        lines += ["", "### ESTIMATES on device profiles (lru, no prefetch; not measurements)", "",
                  "Each cell: estimated decode tok/s. `formula here` applies the same formula with this machine's "
                  "figures, beside what was measured, as a check of the formula.", "",
                  "| artifact / backend | budget | measured here | formula here | "
                  + " | ".join(f"ESTIMATE {n}" for n in devices) + " |", "|---|---|---|---|" + "---|" * len(devices)]
        for (art, backend), variants in groups.items():
            for b in BUDGETS[1:]:
                r = variants.get("lru", {}).get(b)
                if not r:
                    continue
                est = [f"{r.get(f'estimate_{n}_tokens_per_s', float('nan')):.0f}" for n in devices]
                lines.append(f"| {art} / {backend} | {b} | {r['decode_tokens_per_s']:.0f} | "
                             f"{r.get('estimate_this-machine_tokens_per_s', float('nan')):.0f} | " + " | ".join(est) + " |")

    rel = os.path.relpath(a.results, a.out.parent)
    lines += ["", "Plots (one panel per artifact and backend; dotted lines: with prefetch; dashed grey: no cache):", ""]
    plots = [p for p in sorted(a.results.glob("*.png")) if p.stem != "bles_frontier"]  # that one is the card's
    lines += [f"![{p.stem}]({rel}/{p.name})" for p in plots]
    body = "\n".join(lines)
    write_between_markers(a.out, body, a.marker)
    print(body)


if __name__ == "__main__":
    main()
