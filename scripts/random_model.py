"""A randomly initialised checkpoint of a preset shape, for speed and memory benchmarks where the
weights' values do not matter (e.g. the CoSMoE paper's wearable-scale shape). It borrows the
tokenizer of a trained checkpoint; the model's vocabulary may be larger (rows beyond it go unused).

Random weights route almost constantly (switch rate ~0.03: every token's router input is dominated by
a direction shared by all tokens), which flatters every expert cache. `--switch-rate R` gives the model
a trained model's routing statistics instead: each router keeps only a fraction beta of its response to
the 8 strongest directions of its input (what all tokens share; measured on the source checkpoint's
held-out text), with beta found by bisection so that the expert switch rate on that text is R (e.g.
0.32, the BlES model shipped until 2026-12-04; the sticky one switches 0.16). Greedy decoding of a random
model repeats itself (switch rate ~0.03 whatever the routers): benchmark such models with sampling
(edge-bench --temperature 1).

Usage: python scripts/random_model.py --preset wearable --tokenizer-from models/cosmoe-default.pt --out runs/bench/wearable.pt
       [--switch-rate 0.32]
"""

import argparse

import torch

from cosmoe_edge.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from cosmoe_edge.model.config import PRESETS
from cosmoe_edge.model.model import CoSMoE, format_summary, param_summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wearable", choices=sorted(PRESETS))
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--switch-rate", type=float, help="target expert switch rate on held-out text")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    src = load_checkpoint(a.tokenizer_from)
    model = CoSMoE(PRESETS[a.preset])
    print(format_summary(model.cfg, param_summary(model)))
    meta = {"random_weights": True, "preset": a.preset, "seed": a.seed, "val_text": src["meta"].get("val_text")}
    if a.switch_rate is not None:
        _, tok, _ = load_model(a.tokenizer_from)
        ids = torch.tensor([tok.encode(meta["val_text"]).ids[:4 * 256]]).view(4, 256)
        meta["router_beta"], meta["switch_rate"] = set_switch_rate(model, ids, a.switch_rate)
        print(f"routers keep {meta['router_beta']:.4f} of their response to the shared directions: "
              f"switch rate {meta['switch_rate']:.3f} on held-out text (target {a.switch_rate})")
    save_checkpoint(a.out, model, src["tokenizer"], meta, dtype=torch.float16)
    print(f"wrote {a.out}")


@torch.no_grad()
def switch_rate_of(model, ids) -> float:
    from cosmoe_edge.model.losses import switch_rate

    _, routings = model(ids)
    rates = [switch_rate(r.experts).item() for r in routings if r is not None]
    return sum(rates) / len(rates)


@torch.no_grad()
def set_switch_rate(model, ids, target: float, directions: int = 8, steps: int = 30) -> tuple[float, float]:
    """Scale each router's response to the `directions` strongest directions of its input (top singular
    vectors on `ids`: what all tokens share, slowly varying) by beta (1: as initialised), beta by
    bisection on log scale until the switch rate on `ids` is `target`. Returns (beta, rate)."""
    routers = [b.ffn.router for b in model.layers if hasattr(b.ffn, "router")]
    inputs = [None] * len(routers)

    def hook(i):
        def f(module, args):
            inputs[i] = args[0].reshape(-1, args[0].shape[-1]).float()
        return f

    handles = [r.register_forward_pre_hook(hook(i)) for i, r in enumerate(routers)]
    model.eval()
    model(ids)
    for h in handles:
        h.remove()
    original = [r.weight.clone() for r in routers]
    bases = [torch.linalg.svd(x, full_matrices=False)[2][:directions] for x in inputs]

    def apply(beta):
        for r, w, u in zip(routers, original, bases, strict=True):
            r.weight.copy_(w - (1 - beta) * (w @ u.T) @ u)
        return switch_rate_of(model, ids)

    lo, hi = -8.0, 0.0  # log10 beta: lo switches most, hi (beta 1) least
    if (most := apply(10 ** lo)) < target:
        raise SystemExit(f"switch rate {target} is above what this shape reaches ({most:.3f})")
    for _ in range(steps):
        mid = (lo + hi) / 2
        if apply(10 ** mid) > target:
            lo = mid
        else:
            hi = mid
    return 10 ** hi, apply(10 ** hi)


if __name__ == "__main__":
    main()
