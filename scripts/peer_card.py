"""PEER against the MoE and the dense model at equal active FLOPs (issue 15): held-out perplexity of the trained
runs (scripts/model_card_runs.sh), each layer's feed-forward MACs per token, training tokens/s measured here in
one run (the arms' training steps interleaved, same threads), and each PEER layer's pool usage. Writes the table
into docs/MODEL_CARD.md between the "peer" markers.

Usage: python scripts/peer_card.py [--default models/cosmoe-default.pt] [--card-dir runs/card] [--threads 2]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from doc_figures import write_between_markers
from model_card import measure

from cosmoe_edge.model.model import CoSMoE, ffn_macs
from cosmoe_edge.model.train import TrainOptions, make_optimizer

ROWS = [("a", "default MoE (sticky top-k), 8 experts top-2 in every layer", "default"),
        ("b", "dense baseline, FLOP-matched", "dense"),
        ("e", "PEER in the middle layer (2): 256^2 experts, 8 heads x top-16, key dim 128; MoE elsewhere", "peer-mid"),
        ("f", "the same with 128^2 experts, key dim 172", "peer-mid-128"),
        ("g", "(e) without weight decay on the pool and the keys", "peer-mid-nodecay")]


def train_tokens_per_s(cfgs: dict, threads: int, rounds: int = 5, steps: int = 2) -> dict:
    """Training steps of 16 x 256 tokens from random init on random tokens, the arms interleaved round by round
    (this machine drifts); the median over rounds of each arm's tokens/s."""
    torch.set_num_threads(threads)
    o = TrainOptions()
    x = torch.randint(0, 4096, (o.batch_size, o.seq_len + 1), generator=torch.Generator().manual_seed(0))
    runs = {}
    for key, cfg in cfgs.items():
        torch.manual_seed(0)
        model = CoSMoE(cfg).train()
        runs[key] = (model, make_optimizer(model, o))
    rates = {k: [] for k in cfgs}
    for r in range(rounds + 1):
        for key, (model, opt) in runs.items():
            t = time.perf_counter()
            for _ in range(steps):
                logits, _ = model(x[:, :-1])
                F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if r:  # the first round warms up
                rates[key].append(steps * o.batch_size * o.seq_len / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in rates.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--default", type=Path, default=Path("models/cosmoe-default.pt"))
    ap.add_argument("--card-dir", type=Path, default=Path("runs/card"))
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/MODEL_CARD.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    paths = {"a": args.default} | {k: args.card_dir / f"{f}.pt" for k, _, f in ROWS[1:]}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"peer_card: missing {', '.join(missing)}: run scripts/model_card_runs.sh first")
    results = {k: measure(p, args.windows) for k, p in paths.items()}
    speed = train_tokens_per_s({k: r["model"].cfg for k, r in results.items()}, args.threads)
    base = results["a"]["eval"]["ppl"]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} by `scripts/peer_card.py` on {results['a']['tokens']:,} held-out "
             f"tokens ({args.windows} windows of 256), the comparison table's. Every run: the same data and token budget "
             f"({results['a']['meta']['tokens_seen']:,} tokens), seed 1, the shipped recipe (sticky top-k in every MoE "
             f"layer), trained on the CPU. FFN MACs: multiply-accumulates per token of the four feed-forwards, "
             f"routing included (`model.ffn_macs`). Training tokens/s: measured here, {args.threads} threads, the "
             "arms' steps interleaved (median of 5 rounds of 2 steps), from random init.", "",
             "| | model | params total | FFN MACs / token | val. perplexity | vs (a) | training tokens/s | "
             "PEER pool used | PEER KL from uniform |", "|---|---|---|---|---|---|---|---|---|"]
    for key, name, _ in ROWS:
        r = results[key]
        ppl = r["eval"]["ppl"]
        rel = f"{ppl / base - 1:+.1%}" if key != "a" else ""
        usage = r["eval"].get("peer_usage") or []
        used = ", ".join(f"{u['used']:.1%}" for u in usage) or "n/a"
        kl = ", ".join(f"{u['kl_uniform']:.3f}" for u in usage) or "n/a"
        lines.append(f"| ({key}) | {name} | {r['params']['total'] / 1e6:.2f}M | "
                     f"{sum(ffn_macs(r['model'].cfg)) / 1e6:.3f}M | {ppl:.2f} | {rel} | {speed[key]:,.0f} | {used} | "
                     f"{kl} |")
    body = "\n".join(lines)
    write_between_markers(args.out, body, name="peer")
    print(body)


if __name__ == "__main__":
    main()
