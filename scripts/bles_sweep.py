"""Issue 16's sweep: train stickiness recipes with the shipped model's budget (1200 steps x 16 x 256, seed 0)
and measure each on the model card's held-out windows: perplexity, switch rate, the largest expert's
share of routed slots, and the misses per token an LRU cache of k and of 2k experts per layer would take.

Usage: python scripts/bles_sweep.py [--device cuda] [--jobs 8] [--steps 1200] [--out runs/bles] [--arms A,B@1,...]
       python scripts/bles_sweep.py --report A.json [B.json ...] [--save merged.json]   (table + plot into docs)
Arms run in parallel, each an edge-train process; `finetune-*` arms start from the `nobles` arm's model; "ARM@SEED"
is the arm from another seed, compared with "nobles@SEED".
"""

import argparse
import json
import subprocess
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

SHARED = ["--shared-expert-hidden", "384", "--top-k", "1"]  # a declared shared expert, top-1 routed: same FLOPs
STICKY = ["--lb-scope", "batch", "--router-z-weight", "1e-3", "--sticky-from", "0.25", "--bles-weight", "0"]
ARMS = {  # name: edge-train options on top of the preset "bles" (BlES 1.0, load balancing 0.01)
    "nobles": ["--bles-weight", "0"],
    "bles": [],  # the recipe shipped before the sweep
    "bles-batch-lb": ["--lb-scope", "batch", "--sticky-from", "0.25"],
    "reuse-0.01": ["--reuse-weight", "0.01", *STICKY],
    "reuse-0.03": ["--reuse-weight", "0.03", *STICKY],
    "reuse-0.1": ["--reuse-weight", "0.1", *STICKY],
    "reuse-0.1-seq-lb": ["--reuse-weight", "0.1", "--router-z-weight", "1e-3", "--sticky-from", "0.25",
                         "--bles-weight", "0"],
    "shared-bles": SHARED,
    "shared-reuse-0.03": [*SHARED, "--reuse-weight", "0.03", *STICKY],
    # the reuse reward with stronger batch balancing, against its pinned experts (largest share 3-4x in the first
    # sweep)
    "reuse-0.05-lb0.05": ["--reuse-weight", "0.05", *STICKY, "--lb-weight", "0.05"],
    "reuse-0.1-lb0.05": ["--reuse-weight", "0.1", *STICKY, "--lb-weight", "0.05"],
    "reuse-0.1-lb0.1": ["--reuse-weight", "0.1", *STICKY, "--lb-weight", "0.1"],
    "reuse-0.2-lb0.1": ["--reuse-weight", "0.2", *STICKY, "--lb-weight", "0.1"],
    "shared-reuse-0.03-lb0.05": [*SHARED, "--reuse-weight", "0.03", *STICKY,
                                 "--lb-weight", "0.05"],
    "shared-reuse-0.1-lb0.1": [*SHARED, "--reuse-weight", "0.1", *STICKY,
                               "--lb-weight", "0.1"],
    "reuse-0.2-lb0.3": ["--reuse-weight", "0.2", *STICKY, "--lb-weight", "0.3"],
    "reuse-0.3-lb0.3": ["--reuse-weight", "0.3", *STICKY, "--lb-weight", "0.3"],
    "shared-reuse-0.1-lb0.3": [*SHARED, "--reuse-weight", "0.1", *STICKY,
                               "--lb-weight", "0.3"],
    "shared-reuse-0.2-lb0.3": [*SHARED, "--reuse-weight", "0.2", *STICKY,
                               "--lb-weight", "0.3"],
    "shared-reuse-0.1-lb1": [*SHARED, "--reuse-weight", "0.1", *STICKY,
                             "--lb-weight", "1.0"],
    # recipe 1: sticky top-k in the loop (the rule is part of the model, evaluated with it on); deltas around the
    # 50th-90th percentile of the top-k margin at a switch in reuse-0.1-lb0.1 (0.7 / 1.1 / 2.0 logits)
    "sticky-1": ["--sticky-delta", "1", *STICKY],
    "sticky-1-lb0.1": ["--sticky-delta", "1", *STICKY, "--lb-weight", "0.1"],
    "sticky-2-lb0.1": ["--sticky-delta", "2", *STICKY, "--lb-weight", "0.1"],
    "reuse-0.1-lb0.1-sticky-0.5": ["--reuse-weight", "0.1", "--sticky-delta", "0.5", *STICKY, "--lb-weight", "0.1"],
    "reuse-0.1-lb0.1-sticky-1": ["--reuse-weight", "0.1", "--sticky-delta", "1", *STICKY, "--lb-weight", "0.1"],
    "reuse-0.03-lb0.1-sticky-1": ["--reuse-weight", "0.03", "--sticky-delta", "1", *STICKY, "--lb-weight", "0.1"],
    "shared-sticky-1-lb0.1": [*SHARED, "--sticky-delta", "1", *STICKY,
                              "--lb-weight", "0.1"],
    "shared-reuse-0.1-lb0.1-sticky-0.5": [*SHARED, "--reuse-weight", "0.1",
                                          "--sticky-delta", "0.5", *STICKY, "--lb-weight", "0.1"],
    "sticky-1.5-lb0.1": ["--sticky-delta", "1.5", *STICKY, "--lb-weight", "0.1"],
    "sticky-1.75-lb0.1": ["--sticky-delta", "1.75", *STICKY, "--lb-weight", "0.1"],
    "sticky-1.5-lb0.2": ["--sticky-delta", "1.5", *STICKY, "--lb-weight", "0.2"],
    "sticky-2-lb0.2": ["--sticky-delta", "2", *STICKY, "--lb-weight", "0.2"],
    "reuse-0.1-lb0.2-sticky-1": ["--reuse-weight", "0.1", "--sticky-delta", "1", *STICKY, "--lb-weight", "0.2"],
    "shared-sticky-1-lb0.3": [*SHARED, "--sticky-delta", "1", *STICKY,
                              "--lb-weight", "0.3"],
    # recipe 4: the no-BlES model fine-tuned with a stickiness loss for 25% more steps at a lower rate
    "finetune-bles": ["--bles-weight", "1.0", "--lr", "5e-4", "--warmup", "20", "--train-params", "all"],
    "finetune-reuse-0.03": ["--reuse-weight", "0.03", "--bles-weight", "0", "--lb-scope", "batch", "--lr", "5e-4",
                            "--warmup", "20", "--train-params", "all"],
}


def train(name: str, a) -> Path:
    """Train arm `name` ("ARM" or "ARM@SEED": the same arm from another seed) unless its model exists."""
    out = a.out / f"{name}.pt"
    if out.exists():
        return out
    arm, _, seed = name.partition("@")
    cmd = [sys.executable, "-m", "cosmoe_edge.model.train", "--preset", "bles", "--out", str(out), "--device", a.device,
           "--quiet", "--seed", seed or str(a.seed), "--eval-every", str(a.steps)]
    if name.startswith("finetune-"):
        cmd += ["--init-from", str(train("nobles", a)), "--steps", str(a.steps // 4)]
    else:
        cmd += ["--steps", str(a.steps)]
    cmd += ARMS[arm]
    t = time.perf_counter()
    with open(a.out / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"{name}: trained in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def lru_misses(sets, capacity: int) -> int:
    """Misses of an LRU cache of `capacity` experts fed one token's expert set after another."""
    cache, misses = OrderedDict(), 0
    for s in sets:
        for e in s:
            if e in cache:
                cache.move_to_end(e)
            else:
                misses += 1
                cache[e] = True
        while len(cache) > capacity:
            cache.popitem(last=False)
    return misses


def held_out_routings(model, x):
    """Each MoE layer's Routing of the held-out windows x, in batches of 8: (layer, Routing) pairs."""
    for i in range(0, len(x), 8):
        yield from enumerate(model(x[i:i + 8])[1])


@torch.no_grad()
def measure_arm(path: Path, windows: int) -> dict:
    from model_card import measure

    r = measure(path, windows)
    model, x = r["model"], r["x"]
    cfg = model.cfg
    per_layer = [[] for _ in range(cfg.n_layers)]
    for layer, rt in held_out_routings(model, x):
        per_layer[layer] += [set(row) for row in rt.experts.reshape(-1, rt.experts.shape[-1]).tolist()]
    tokens = x.numel()
    usage = r["eval"]["expert_usage"]
    return {"ppl": r["eval"]["ppl"], "switch_rate": r["eval"]["switch_rate_mean"],
            "switch_rate_per_layer": r["eval"]["switch_rate"], "usage": usage,
            "max_share": max(max(u) for u in usage) * cfg.num_experts, "top_k": cfg.top_k,
            "shared_expert": cfg.shared_expert_hidden > 0,
            "misses_per_token_lru_k": sum(lru_misses(s, cfg.top_k) for s in per_layer) / tokens,
            "misses_per_token_lru_2k": sum(lru_misses(s, 2 * cfg.top_k) for s in per_layer) / tokens,
            "train_seconds": r["meta"]["train_seconds"], "steps": r["meta"]["steps"]}


@torch.no_grad()
def switch_margins(path: Path, windows: int) -> list[float]:
    """Where a token drops one of the previous token's experts: its k-th chosen expert's logit minus the best
    dropped one's, i.e. the sticky delta that would have kept it (held-out windows, every layer)."""
    from model_card import measure

    r = measure(path, windows)
    out = []
    for _, rt in held_out_routings(r["model"], r["x"]):
        z, E = rt.logits.float(), rt.logits.shape[-1]
        chosen = torch.nn.functional.one_hot(rt.experts, E).sum(-2).bool()  # (B, T, E)
        dropped = chosen[:, :-1] & ~chosen[:, 1:]
        kth = z[:, 1:].masked_fill(~chosen[:, 1:], float("inf")).amin(-1)
        best = z[:, 1:].masked_fill(~dropped, float("-inf")).amax(-1)
        out += (kth - best)[dropped.any(-1)].tolist()
    return out


def baseline(results: dict, name: str) -> dict:
    """The no-BlES arm of the same seed ("ARM@SEED" against "nobles@SEED"): seeds move perplexity by ~2%."""
    seed = name.partition("@")[2]
    return results[f"nobles@{seed}"] if seed else results["nobles"]


def report(results: dict, out_doc: Path, plot: Path, note: str):
    """The table (largest share: of a routed expert, whatever else the arm has) and the Pareto plot, each arm
    against the no-BlES arm of its seed."""
    from doc_figures import write_between_markers

    rel = {}  # arm -> (perplexity relative to its seed's no-BlES, how many times fewer switches)
    for n, r in results.items():
        base = baseline(results, n)
        rel[n] = (r["ppl"] / base["ppl"] - 1, base["switch_rate"] / max(r["switch_rate"], 1e-9))
    lines = [note, "", "| arm | val. perplexity | vs no-BlES (same seed) | switch rate | fewer switches | largest expert "
             "share (fair = 1) | LRU misses / token, k / 2k per layer |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['ppl']:.2f} | {rel[name][0]:+.1%} | {r['switch_rate']:.3f} | "
                     f"{rel[name][1]:.1f}x | {r['max_share']:.2f} | "
                     f"{r['misses_per_token_lru_k']:.2f} / {r['misses_per_token_lru_2k']:.2f} |")
    ok = [n for n, r in results.items() if rel[n][0] <= 0.03 and rel[n][1] >= 3 and r["max_share"] <= 1.5]
    front = [n for n in results if not any(
        rel[o][0] <= rel[n][0] and rel[o][1] >= rel[n][1] and o != n for o in results)]
    seeds = {}  # arm -> its runs, for the arms run from more than one seed (nobles excepted: it is the reference)
    for n in results:
        seeds.setdefault(n.partition("@")[0], []).append(n)
    means = [f"{arm} ({len(runs)} seeds) {sum(rel[n][0] for n in runs) / len(runs):+.1%}, "
             f"{sum(rel[n][1] for n in runs) / len(runs):.1f}x fewer switches, largest share "
             f"{max(results[n]['max_share'] for n in runs):.2f}" for arm, runs in seeds.items()
             if len(runs) > 1 and arm != "nobles"]
    lines += ["", "Over seeds (mean; largest share: the worst seed's): " + "; ".join(means) + "."] if means else []
    lines += ["", "Goal (>= 3x fewer switches than no-BlES within +3% perplexity, no routed expert above 1.5x its "
              f"fair share): {'met by ' + ', '.join(ok) if ok else 'not met by any arm'}. Pareto frontier (against "
              "the same seed's no-BlES): " + ", ".join(front) + "."]
    write_between_markers(out_doc, "\n".join(lines), "bles-sweep", "## BlES without the collapse: the sweep")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for name in results:
        x, y = 1 / rel[name][1], 100 * rel[name][0]
        ax.scatter(x, y, color="tab:red" if name in ok else "tab:green" if name in front else "tab:blue", s=14)
        if name in front or name in ok or (x <= 0.4 and y <= 8):  # the labels that matter; the rest would overlap
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axhline(3, color="grey", linestyle="--", linewidth=1, label="+3% perplexity")
    ax.axvline(1 / 3, color="grey", linestyle=":", linewidth=1, label="switch rate / 3")
    ax.set_xlabel("switch rate, relative to no-BlES (held-out)")
    ax.set_ylabel("perplexity vs no-BlES of the same seed (%)")
    ax.set_ylim(-8, 15)  # the arms above +15% (BlES, the strongest balancing) are in the table
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("stickiness recipes (green: Pareto frontier; red: meets the goal incl. balance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bles"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--report", type=Path, nargs="+", help="only write the docs from these sweep.json files (merged in "
                                                            "order: a later file's arm replaces an earlier one's)")
    ap.add_argument("--note", help="with --report: the table's note (default: the first file's)")
    ap.add_argument("--save", type=Path, help="with --report: write the merged sweep.json here")
    ap.add_argument("--margins", type=Path, help="only print the percentiles of this model's top-k margin at a switch "
                                                 "(what a sticky delta must exceed to keep an expert)")
    ap.add_argument("--doc", type=Path, default=Path("docs/MODEL_CARD.md"))
    ap.add_argument("--plot", type=Path, default=Path("docs/bench/bles_frontier.png"))
    a = ap.parse_args()
    if a.margins:
        import numpy as np

        q = [50, 60, 67, 75, 90]
        m = np.percentile(switch_margins(a.margins, a.windows), q)
        return print(f"{a.margins}: margin at a switch, percentiles " + ", ".join(f"{p}th {v:.2f}" for p, v in
                                                                                 zip(q, m, strict=True)))
    if a.report:
        files = [json.loads(p.read_text()) for p in a.report]
        merged = {"note": a.note or files[0]["note"], "results": {k: v for f in files for k, v in f["results"].items()}}
        if a.save:
            a.save.write_text(json.dumps(merged, indent=1))
        return report(merged["results"], a.doc, a.plot, merged["note"])
    a.out.mkdir(parents=True, exist_ok=True)
    names = a.arms.split(",")
    if any(n.startswith("finetune-") for n in names):
        train("nobles", a)  # the start of the fine-tune arms
    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(lambda n: train(n, a), names))
    torch.set_num_threads(2)
    with ThreadPoolExecutor(a.jobs) as pool:
        results = dict(zip(names, pool.map(lambda n: measure_arm(a.out / f"{n}.pt", a.windows), names), strict=True))
    note = (f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bles_sweep.py --device {a.device}` on "
            f"{a.windows * 256:,} held-out tokens ({a.windows} windows of 256, the card's). Every arm: {a.steps} steps "
            f"x 16 x 256 tokens from scratch, seed {a.seed} (finetune-*: the nobles model plus {a.steps // 4} steps).")
    (a.out / "sweep.json").write_text(json.dumps({"note": note, "results": results}, indent=1))
    report(results, a.doc, a.plot, note)


if __name__ == "__main__":
    main()
