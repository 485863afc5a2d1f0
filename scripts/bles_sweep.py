"""Issue 16's sweep: train stickiness recipes with the shipped model's budget (1200 steps x 16 x 256, seed 0)
and measure each on the model card's held-out windows: perplexity, switch rate, the largest expert's
share of routed slots, and the misses per token an LRU cache of k and of 2k experts per layer would take.

Usage: python scripts/bles_sweep.py [--device cuda] [--jobs 8] [--steps 1200] [--out runs/bles]
       python scripts/bles_sweep.py --report runs/bles/sweep.json   (table + plot into docs only)
Arms run in parallel, each an edge-train process; `finetune-*` arms start from the `nobles` arm's model.
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

STICKY = ["--lb-scope", "batch", "--router-z-weight", "1e-3", "--sticky-from", "0.25", "--bles-weight", "0"]
ARMS = {  # name: edge-train options on top of the default preset (BlES 1.0, load balancing 0.01)
    "nobles": ["--bles-weight", "0"],
    "bles": [],  # the shipped recipe
    "bles-batch-lb": ["--lb-scope", "batch", "--sticky-from", "0.25"],
    "reuse-0.01": ["--reuse-weight", "0.01", *STICKY],
    "reuse-0.03": ["--reuse-weight", "0.03", *STICKY],
    "reuse-0.1": ["--reuse-weight", "0.1", *STICKY],
    "reuse-0.1-seq-lb": ["--reuse-weight", "0.1", "--router-z-weight", "1e-3", "--sticky-from", "0.25",
                         "--bles-weight", "0"],
    "shared-bles": ["--shared-expert-hidden", "384", "--top-k", "1"],
    "shared-reuse-0.03": ["--shared-expert-hidden", "384", "--top-k", "1", "--reuse-weight", "0.03", *STICKY],
    # the reuse reward with stronger batch balancing, against its pinned experts (largest share 3-4x in the first
    # sweep)
    "reuse-0.05-lb0.05": ["--reuse-weight", "0.05", *STICKY, "--lb-weight", "0.05"],
    "reuse-0.1-lb0.05": ["--reuse-weight", "0.1", *STICKY, "--lb-weight", "0.05"],
    "reuse-0.1-lb0.1": ["--reuse-weight", "0.1", *STICKY, "--lb-weight", "0.1"],
    "reuse-0.2-lb0.1": ["--reuse-weight", "0.2", *STICKY, "--lb-weight", "0.1"],
    "shared-reuse-0.03-lb0.05": ["--shared-expert-hidden", "384", "--top-k", "1", "--reuse-weight", "0.03", *STICKY,
                                 "--lb-weight", "0.05"],
    "shared-reuse-0.1-lb0.1": ["--shared-expert-hidden", "384", "--top-k", "1", "--reuse-weight", "0.1", *STICKY,
                               "--lb-weight", "0.1"],
    "reuse-0.2-lb0.3": ["--reuse-weight", "0.2", *STICKY, "--lb-weight", "0.3"],
    "reuse-0.3-lb0.3": ["--reuse-weight", "0.3", *STICKY, "--lb-weight", "0.3"],
    "shared-reuse-0.1-lb0.3": ["--shared-expert-hidden", "384", "--top-k", "1", "--reuse-weight", "0.1", *STICKY,
                               "--lb-weight", "0.3"],
    "shared-reuse-0.2-lb0.3": ["--shared-expert-hidden", "384", "--top-k", "1", "--reuse-weight", "0.2", *STICKY,
                               "--lb-weight", "0.3"],
    "shared-reuse-0.1-lb1": ["--shared-expert-hidden", "384", "--top-k", "1", "--reuse-weight", "0.1", *STICKY,
                             "--lb-weight", "1.0"],
    # recipe 4: the no-BlES model fine-tuned with a stickiness loss for 25% more steps at a lower rate
    "finetune-bles": ["--bles-weight", "1.0", "--lr", "5e-4", "--warmup", "20", "--train-params", "all"],
    "finetune-reuse-0.03": ["--reuse-weight", "0.03", "--bles-weight", "0", "--lb-scope", "batch", "--lr", "5e-4",
                            "--warmup", "20", "--train-params", "all"],
}


def train(name: str, a) -> Path:
    out = a.out / f"{name}.pt"
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "cosmoe_edge.model.train", "--out", str(out), "--device", a.device, "--quiet",
           "--seed", str(a.seed), "--eval-every", str(a.steps)]
    if name.startswith("finetune-"):
        cmd += ["--init-from", str(train("nobles", a)), "--steps", str(a.steps // 4)]
    else:
        cmd += ["--steps", str(a.steps)]
    cmd += ARMS[name]
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


@torch.no_grad()
def measure_arm(path: Path, windows: int) -> dict:
    from model_card import measure

    r = measure(path, windows)
    model, x = r["model"], r["x"]
    cfg = model.cfg
    per_layer = [[] for _ in range(cfg.n_layers)]
    for i in range(0, len(x), 8):
        _, routings = model(x[i:i + 8])
        for layer, rt in enumerate(routings):
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


def report(results: dict, out_doc: Path, plot: Path, note: str):
    """The table (largest share: of a routed expert, whatever else the arm has) and the Pareto plot."""
    from doc_figures import write_between_markers

    base = results["nobles"]
    lines = [note, "", "| arm | val. perplexity | vs no-BlES | switch rate | fewer switches | largest expert share "
             "(fair = 1) | LRU misses / token, k / 2k per layer |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['ppl']:.2f} | {r['ppl'] / base['ppl'] - 1:+.1%} | {r['switch_rate']:.3f} | "
                     f"{base['switch_rate'] / max(r['switch_rate'], 1e-9):.1f}x | {r['max_share']:.2f} | "
                     f"{r['misses_per_token_lru_k']:.2f} / {r['misses_per_token_lru_2k']:.2f} |")
    ok = [n for n, r in results.items() if r["ppl"] <= 1.03 * base["ppl"]
          and r["switch_rate"] <= base["switch_rate"] / 3 and r["max_share"] <= 1.5]
    front = [n for n, r in results.items() if not any(
        o["ppl"] <= r["ppl"] and o["switch_rate"] <= r["switch_rate"] and o is not r for o in results.values())]
    lines += ["", "Goal (>= 3x fewer switches than no-BlES within +3% perplexity, no routed expert above 1.5x its "
              f"fair share): {'met by ' + ', '.join(ok) if ok else 'not met by any arm'}. Pareto frontier: "
              + ", ".join(front) + "."]
    write_between_markers(out_doc, "\n".join(lines), "bles-sweep", "## BlES without the collapse: the sweep")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in results.items():
        ax.scatter(r["switch_rate"], r["ppl"], color="tab:green" if name in front else "tab:blue")
        ax.annotate(name, (r["switch_rate"], r["ppl"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.axhline(1.03 * base["ppl"], color="grey", linestyle="--", linewidth=1, label="no-BlES perplexity +3%")
    ax.axvline(base["switch_rate"] / 3, color="grey", linestyle=":", linewidth=1, label="no-BlES switch rate / 3")
    ax.set_xlabel("expert switch rate (held-out)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("stickiness recipes: switch rate against perplexity (green: Pareto frontier)", fontsize=9)
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
    ap.add_argument("--report", type=Path, help="only write the docs from this sweep.json")
    ap.add_argument("--doc", type=Path, default=Path("docs/MODEL_CARD.md"))
    ap.add_argument("--plot", type=Path, default=Path("docs/bench/bles_frontier.png"))
    a = ap.parse_args()
    if a.report:
        d = json.loads(a.report.read_text())
        return report(d["results"], a.doc, a.plot, d["note"])
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
