"""Held-out perplexity of a dense model and of models carved from it (edge-carve), on the same windows:
8 x 256 tokens of the corpus's validation documents (calibration reads the training documents), plus a
greedy sample from each. Usage: python scripts/carve_eval.py DENSE.pt CARVED.pt [...]; one JSON line each.
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.data import heldout_text
from cosmoe_edge.model.generate import generate

PROMPT = "The capital of France is"


@torch.no_grad()
def score(path, windows: int, window: int) -> dict:
    model, tok, ckpt = load_model(path)
    text = heldout_text(200_000)
    ids = torch.tensor(tok.encode(text).ids[:windows * (window + 1)]).view(windows, window + 1)
    t = time.perf_counter()
    nll = sum(F.cross_entropy(model(row[None, :-1])[0][0], row[1:], reduction="sum").item() for row in ids)
    seconds = time.perf_counter() - t
    prompt = tok.encode(PROMPT).ids
    carve = ckpt["meta"].get("carve")
    return {"model": str(path), "carve": {k: carve[k] for k in ("experts", "shared", "active", "active_ffn_share",
                                                                  "seconds", "calibration_tokens")} if carve else None,
            "finetune": {k: v for k, v in ckpt["meta"]["finetune"].items() if k != "trained"}
            if ckpt["meta"].get("finetune") else None,
            "ppl": round(math.exp(nll / ids[:, 1:].numel()), 4), "tokens": ids[:, 1:].numel(),
            "eval_seconds": round(seconds, 1), "greedy": PROMPT + tok.decode(generate(model, prompt, 24))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    a = ap.parse_args()
    torch.manual_seed(0)
    for path in a.models:
        print(json.dumps(score(path, a.windows, a.window)), flush=True)


if __name__ == "__main__":
    main()
