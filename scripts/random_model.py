"""A randomly initialised checkpoint of a preset shape, for speed and memory benchmarks where the
weights' values do not matter (e.g. the CoSMoE paper's wearable-scale shape). It borrows the
tokenizer of a trained checkpoint; the model's vocabulary may be larger (rows beyond it go unused).

Usage: python scripts/random_model.py --preset wearable --tokenizer-from models/cosmoe-default.pt --out runs/bench/wearable.pt
"""

import argparse

import torch

from cosmoe_edge.model.checkpoint import load_checkpoint, save_checkpoint
from cosmoe_edge.model.config import PRESETS
from cosmoe_edge.model.model import CoSMoE, format_summary, param_summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wearable", choices=sorted(PRESETS))
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    src = load_checkpoint(a.tokenizer_from)
    model = CoSMoE(PRESETS[a.preset])
    print(format_summary(model.cfg, param_summary(model)))
    meta = {"random_weights": True, "preset": a.preset, "seed": a.seed, "val_text": src["meta"].get("val_text")}
    save_checkpoint(a.out, model, src["tokenizer"], meta, dtype=torch.float16)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
