"""Compressed experts on the shipped model: top-2, top-1 and top-1 + compressed experts, evaluated on the
model card's held-out windows, written into docs/MODEL_CARD.md (between the "compressed" markers) and
docs/bench/compressed_experts.json.

Usage: python scripts/compressed_experts.py [--runs runs/ce] [--windows 128] [--device cuda] [--jobs 2]
Fine-tunes the arms it does not find in --runs (edge-train --init-from, one CPU thread, ~6-8 min each):
  vectors         k_main 1, only the compressed-expert vectors train (the default; 8,192 parameters)
  routers         k_main 1, vectors + routers + norms train, lr 5e-4, the model's own losses
  top1-routers    top-1 without compressed experts, routers + norms trained the same way (the control)
"""

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from doc_figures import write_between_markers
from model_card import measure

from cosmoe_edge.model.checkpoint import load_checkpoint
from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.evaluate import evaluate
from cosmoe_edge.model.model import CoSMoE, param_summary

SHIPPED = Path("models/cosmoe-default.pt")
COMMON = ["--steps", "300", "--warmup", "30", "--eval-every", "100", "--threads", "1", "--quiet"]
ARMS = {
    "vectors": ["--k-main", "1", "--lr", "5e-3"],
    # routers that train keep the model's own load balancing (on the sticky model, without it, a first run
    # collapsed onto one or two experts per layer)
    "routers": ["--k-main", "1", "--train-params", "routers", "--lr", "5e-4"],
    "top1-routers": ["--top-k", "1", "--train-params", "routers", "--lr", "5e-4"],
}


def fine_tune(name: str, runs: Path, device: str = "cpu") -> Path:
    out = runs / f"ce1-{name}.pt"
    if not out.exists():
        cmd = [sys.executable, "-m", "cosmoe_edge.model.train", "--init-from", str(SHIPPED), "--out", str(out),
               *ARMS[name], *COMMON, "--device", device]
        print("running", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return out


def with_top_k(path: Path, top_k: int) -> CoSMoE:
    """The shipped weights with another top_k: plain top-1 is the same model asked for fewer experts."""
    ckpt = load_checkpoint(path)
    model = CoSMoE(ModelConfig.from_dict(ckpt["config"] | {"top_k": top_k}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/ce"))
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("docs/MODEL_CARD.md"))
    ap.add_argument("--json", type=Path, default=Path("docs/bench/compressed_experts.json"))
    ap.add_argument("--device", default="cpu", help="where the fine-tunes run (cuda: a GPU)")
    ap.add_argument("--jobs", type=int, default=1, help="fine-tunes run at once")
    args = ap.parse_args()
    torch.manual_seed(0)
    args.runs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        paths = dict(zip(ARMS, pool.map(lambda n: fine_tune(n, args.runs, args.device), ARMS), strict=True))
    shipped = measure(SHIPPED, args.windows)
    x, y = shipped["x"], shipped["y"]
    rows = [("top-2 (the shipped model)", shipped["eval"], shipped["params"], None)]
    top1 = with_top_k(SHIPPED, 1)
    rows.append(("top-1, same weights", evaluate(top1, x, y), param_summary(top1), None))
    for name, label in (("top1-routers", "top-1, routers + norms fine-tuned (control)"),
                        ("vectors", "**top-1 + compressed experts** (vectors fine-tuned)"),
                        ("routers", "top-1 + compressed experts, vectors + routers + norms fine-tuned")):
        r = measure(paths[name], args.windows)
        rows.append((label, r["eval"], r["params"], r["meta"]))
    top2, top1_ppl, ce = rows[0][1]["ppl"], rows[1][1]["ppl"], rows[3][1]["ppl"]
    recovered = (top1_ppl - ce) / (top1_ppl - top2)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} by `scripts/compressed_experts.py` on {x.numel():,} held-out tokens "
             f"({args.windows} windows of 256, the table above's). Each fine-tune: 300 steps of 16 x 256 tokens "
             f"(1.23M tokens) from the shipped model, {'one CPU thread' if args.device == 'cpu' else 'on a GPU'}.", "",
             "| model | active / token | trained params | fine-tune | val. perplexity | vs top-2 | switch rate |",
             "|---|---|---|---|---|---|---|"]
    for label, ev, params, meta in rows:
        trained = f"{meta['trained_params']:,}" if meta else ""
        tune = f"{meta['train_seconds']:.0f} s" if meta else ""
        lines.append(f"| {label} | {params['active'] / 1e6:.2f}M | {trained} | {tune} | {ev['ppl']:.2f} | "
                     f"{ev['ppl'] / top2 - 1:+.1%} | {ev['switch_rate_mean']:.3f} |")
    lines += ["", f"Top-1 + compressed experts recovers {recovered:.0%} of the perplexity gap between top-1 and top-2 "
              f"({top1_ppl:.2f} -> {ce:.2f}, top-2 {top2:.2f}; goal: at least half)."]
    body = "\n".join(lines)
    write_between_markers(args.out, body, "compressed", "## Compressed experts (top-1 + CE)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([{"model": label, "ppl": ev["ppl"], "switch_rate": ev["switch_rate_mean"],
                                      "active": params["active"], "trained_params": meta and meta["trained_params"],
                                      "train_seconds": meta and meta["train_seconds"]}
                                     for label, ev, params, meta in rows], indent=1))
    print(body)


if __name__ == "__main__":
    main()
