"""Measure the model-card comparison and write it into docs/MODEL_CARD.md between the figure markers.

Usage: python scripts/model_card.py [--default runs/default/model.pt] [--card-dir runs/card]
Every checkpoint is evaluated on the same held-out windows (the corpus's validation split).
"""

import argparse
import time
from pathlib import Path

import torch
from doc_figures import write_between_markers

from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.data import encode_stream, eval_windows, find_corpus, read_documents, split_documents
from cosmoe_edge.model.evaluate import evaluate
from cosmoe_edge.model.generate import generate
from cosmoe_edge.model.model import param_summary
from cosmoe_edge.model.tokenizer import eos_id

ROWS = [("a", "default MoE (sticky top-k)", "default"), ("b", "dense baseline, FLOP-matched", "dense"),
        ("c", "MoE without stickiness (no BlES, no sticky rule)", "nobles"),
        ("d", "MoE with BlES (the previous default model)", "bles")]
PROMPTS = ["The list type is", "To open a file for reading,", "The :mod:`os` module"]


def measure(path: Path, windows: int) -> dict:
    model, tok, ckpt = load_model(path)
    _, val = split_documents(read_documents(find_corpus()))
    x, y = eval_windows(encode_stream(tok, val, eos_id(tok)), 256, windows)
    ev = evaluate(model, x, y)
    return {"model": model, "tok": tok, "meta": ckpt["meta"], "eval": ev, "params": param_summary(model),
            "tokens": x.numel(), "x": x, "y": y}


def largest_share(ev: dict) -> float:
    """The most used expert's share of the top-k slots in any layer, in units of the fair share (1/E)."""
    return max(max(u) * len(u) for u in ev["expert_usage"])


def table(results: dict) -> list[str]:
    base = results.get("a")
    lines = ["| | model | seed | params total | active / token | val. perplexity | vs (a) | expert switch rate |",
             "|---|---|---|---|---|---|---|---|"]
    for key, name, _ in ROWS:
        r = results.get(key)
        if r is None:
            lines.append(f"| ({key}) | {name} | not trained | | | | | |")
            continue
        ppl = r["eval"]["ppl"]
        rel = f"{ppl / base['eval']['ppl'] - 1:+.1%}" if base and key != "a" else ""
        sw = r["eval"].get("switch_rate_mean")
        sw = f"{sw:.3f} (" + ", ".join(f"{s:.2f}" for s in r["eval"]["switch_rate"]) + ")" if sw is not None else "n/a"
        p = r["params"]
        lines.append(f"| ({key}) | {name} | {r['meta']['options']['seed']} | {p['total'] / 1e6:.2f}M | "
                     f"{p['active'] / 1e6:.2f}M | {ppl:.2f} | {rel} | {sw} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--default", type=Path, default=Path("runs/default/model.pt"))
    ap.add_argument("--card-dir", type=Path, default=Path("runs/card"))
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("docs/MODEL_CARD.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    paths = {"a": args.default} | {k: args.card_dir / f"{f}.pt" for k, _, f in ROWS[1:]}
    results = {k: measure(p, args.windows) for k, p in paths.items() if p.exists()}
    a = results["a"]
    meta = a["meta"]
    o = meta["options"]
    devices = {}
    for k, r in results.items():
        devices.setdefault(r["meta"]["options"].get("device", "cpu"), []).append(f"({k})")
    where = "; ".join(f"{' '.join(ks)} trained on {'a GPU' if d.startswith('cuda') else 'the CPU'}"
                      for d, ks in devices.items())
    lines = [f"Measured {time.strftime('%Y-%m-%d')} by `scripts/model_card.py` on {a['tokens']:,} held-out tokens "
             f"({args.windows} windows of 256). Every run: {meta['tokens_seen']:,} training tokens "
             f"({o['steps']} steps x {o['batch_size']} x {o['seq_len']}), same data; {where}.", ""]
    lines += table(results)
    if "c" in results:
        c = results["c"]["eval"]
        for key, what in (("a", "Sticky top-k"), ("d", "BlES")):
            if key in results:
                e = results[key]["eval"]
                lines += ["", f"{what} cuts the expert switch rate "
                          f"{c['switch_rate_mean'] / e['switch_rate_mean']:.1f}x ({c['switch_rate_mean']:.3f} -> "
                          f"{e['switch_rate_mean']:.3f}) for {e['ppl'] / c['ppl'] - 1:+.1%} perplexity against the "
                          f"same MoE without it ({key}: {e['ppl']:.2f}, c: {c['ppl']:.2f}); its most used expert "
                          f"takes {largest_share(e):.2f}x its fair share (goal: at least 3x fewer switches for at "
                          "most +3%, no expert above 1.5x)."]
    if "b" in results:
        lines += ["", f"The default MoE {'beats' if a['eval']['ppl'] < results['b']['eval']['ppl'] else 'does not beat'} "
                  f"the FLOP-matched dense baseline ({a['eval']['ppl']:.2f} vs {results['b']['eval']['ppl']:.2f})."]
        if "c" in results:
            c, b = results["c"]["eval"]["ppl"], results["b"]["eval"]["ppl"]
            lines[-1] += f" Without stickiness the MoE's perplexity is {c:.2f} against the dense model's {b:.2f}."
    lines += ["", "Expert usage per layer of (a) (share of top-k slots per expert):", ""]
    lines += [f"- layer {i}: " + " ".join(f"{u:.2f}" for u in usage) for i, usage in enumerate(a["eval"]["expert_usage"])]
    lines += ["", "Greedy samples from (a) (64 new tokens):", ""]
    model, tok = a["model"], a["tok"]
    for prompt in PROMPTS:
        ids = generate(model, tok.encode(prompt).ids, 64, eos=eos_id(tok))
        lines += ["```", prompt + tok.decode(ids), "```"]
    body = "\n".join(lines)
    write_between_markers(args.out, body)
    print(body)


if __name__ == "__main__":
    main()
