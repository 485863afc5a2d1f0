"""The speed-quality table of docs/BENCHMARKS.md (between the "frontier" markers) from an edge-bench run
with --selections and --quality-tokens (scripts/frontier_bench.sh), and its frontier.png copied to
docs/bench/frontier/.
Usage: python scripts/frontier_tables.py RESULTS_DIR [--out docs/BENCHMARKS.md]
"""

import argparse
import json
import shutil
from pathlib import Path

from doc_figures import write_between_markers

BASE = "k2"  # the shipped model as trained: top-2, a miss waits for its load
GOALS = {"25%": (1.5, 0.03), "12.5%": (2.0, 0.05)}  # speed-up over BASE, perplexity cost allowed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    ap.add_argument("--plots", type=Path, default=Path("docs/bench/frontier"))
    a = ap.parse_args()
    d = json.loads((a.results / "results.json").read_text())
    hw = d["machine"]
    rows = [r for r in d["rows"] if "perplexity" in r and "decode_tokens_per_s" in r]
    a.plots.mkdir(parents=True, exist_ok=True)
    shutil.copy(a.results / "frontier.png", a.plots / "frontier.png")
    (a.plots / "results.json").write_text(json.dumps(d, indent=1))
    eval_tokens = rows[0]["eval_tokens"]
    lines = [f"Measured {hw['date']} on {hw['cpu']} ({hw['cores']} cores), `scripts/frontier_bench.sh`: the shipped "
             "model with compressed experts (vectors fine-tuned, [MODEL_CARD](MODEL_CARD.md)), int4, cold (page "
             f"cache dropped before each run), LRU. Decode: {rows[0]['generated_tokens']} tokens generated from the "
             f"default prompt, median of {rows[0]['runs']} runs. Eval: edge-eval on {eval_tokens} held-out tokens "
             "(the same tokens for every row, teacher-forced one at a time), one run. `k2` is the shipped model as "
             "trained (top-2, a miss waits); `default` is the artifact's own choice, top-1 + compressed experts.",
             "", "| backend | budget | selection | decode tok/s | vs k2 | eval tok/s | vs k2 | misses / token (eval) | "
             "perplexity | vs k2 |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for backend in sorted({r["backend"] for r in rows}):
        for budget in GOALS:
            group = [r for r in rows if r["backend"] == backend and r["budget"] == budget]
            base = next((r for r in group if r["selection"] == BASE), None)
            if base is None:
                continue
            for r in group:
                lines.append(
                    f"| {backend} | {budget} | {r['selection'] or 'default'} | {r['decode_tokens_per_s']:.0f} | "
                    f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x | {r['eval_tokens_per_s']:.0f} | "
                    f"{r['eval_tokens_per_s'] / base['eval_tokens_per_s']:.2f}x | {r['eval_misses_per_token']:.2f} | "
                    f"{r['perplexity']:.2f} | {r['perplexity'] / base['perplexity'] - 1:+.1%} |")
            speedup, cost = GOALS[budget]
            ok = [r for r in group if r["perplexity"] <= base["perplexity"] * (1 + cost) and r is not base]
            best = max(ok, key=lambda r: r["eval_tokens_per_s"], default=None)
            if best is None:
                verdicts.append(f"- {backend} at {budget}: no selection within {cost:+.0%} perplexity of k2.")
                continue
            s_eval = best["eval_tokens_per_s"] / base["eval_tokens_per_s"]
            s_dec = best["decode_tokens_per_s"] / base["decode_tokens_per_s"]
            met = "meets" if min(s_eval, s_dec) >= speedup else "misses"
            verdicts.append(f"- {backend} at {budget}: fastest within {cost:+.0%} perplexity is "
                            f"`{best['selection'] or 'default'}`, {s_eval:.2f}x (eval) / {s_dec:.2f}x (decode) the "
                            f"speed of k2 for {best['perplexity'] / base['perplexity'] - 1:+.1%} perplexity: {met} "
                            f"the goal of {speedup:g}x.")
    lines += ["", "Against the goals (the fastest selection whose perplexity is within the allowed cost of k2's):", ""]
    lines += verdicts + ["", "![speed-quality frontier](bench/frontier/frontier.png)"]
    body = "\n".join(lines)
    write_between_markers(a.out, body, "frontier", "## Speed against quality: which experts run on a miss")
    print(body)


if __name__ == "__main__":
    main()
