"""Where a carved model's perplexity goes: its router, or the partition into experts. On the held-out windows
of scripts/carve_eval.py, each carved model is scored with
  router     its CMoE router (what edge-carve ships),
  oracle     per token the A routed experts whose outputs are largest (L2), the best any router over this
             partition can do by that measure,
  random     the same oracle over a random partition of the same routed neurons (shared expert kept),
  all        every expert (the dense model exactly);
and the dense model with a per-token neuron oracle: each token keeps the same share of its FFN neurons,
those of largest |h_j| * ||w2[:, j]||, with no expert structure at all.
Usage: python scripts/carve_oracle.py DENSE.pt CARVED.pt [...]; one JSON line per model and mode.
"""

import argparse
import json
import math
import types

import torch
import torch.nn.functional as F

from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.data import heldout_text
from cosmoe_edge.model.model import route_cmoe


def moe_forward(mode: str):
    def forward(self, x):
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        outs = torch.stack([e(flat) for e in self.experts], 1)  # (tokens, experts, D)
        if mode == "all":
            chosen = torch.arange(outs.shape[1]).expand(flat.shape[0], -1)
        elif mode in ("oracle", "random"):
            chosen = outs.norm(dim=-1).topk(self.top_k, dim=-1).indices
        else:
            r = self.router
            chosen = route_cmoe(r(flat), self.top_k, r.selection_bias, r.weight_scale)[1]
        out = outs.gather(1, chosen[..., None].expand(-1, -1, D)).sum(1)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(B, T, D), None
    return forward


def neuron_oracle(share: float):
    def forward(self, x):
        h = F.silu(self.w1(x)) * self.w3(x)
        contribution = h.abs() * self.w2.weight.norm(dim=0)
        keep = torch.zeros_like(h).scatter_(-1, contribution.topk(int(share * h.shape[-1]), -1).indices, 1.0)
        return self.w2(h * keep), None
    return forward


def shuffle_routed(model, seed: int = 0):
    """Deal each layer's routed neurons into the experts at random (same sizes)."""
    g = torch.Generator().manual_seed(seed)
    for layer in model.layers:
        ex = layer.ffn.experts
        m = ex[0].w1.weight.shape[0]
        w1, w3 = torch.cat([e.w1.weight for e in ex]), torch.cat([e.w3.weight for e in ex])
        w2 = torch.cat([e.w2.weight for e in ex], 1)
        perm = torch.randperm(len(ex) * m, generator=g)
        for i, e in enumerate(ex):
            ids = perm[i * m:(i + 1) * m]
            e.w1.weight.copy_(w1[ids]), e.w3.weight.copy_(w3[ids]), e.w2.weight.copy_(w2[:, ids])


def perplexity(model, ids) -> float:
    nll = sum(F.cross_entropy(model(row[None, :-1])[0][0], row[1:], reduction="sum").item() for row in ids)
    return round(math.exp(nll / ids[:, 1:].numel()), 3)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dense")
    ap.add_argument("carved", nargs="+")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    a = ap.parse_args()
    text = heldout_text(200_000)
    shares = set()
    for path in a.carved:
        model, tok, ckpt = load_model(path)
        ids = torch.tensor(tok.encode(text).ids[:a.windows * (a.window + 1)]).view(a.windows, a.window + 1)
        carve = ckpt["meta"]["carve"]
        shares.add(carve["active_ffn_share"])
        for mode in ("router", "oracle", "all", "random"):
            if mode == "random":
                shuffle_routed(model)
            for layer in model.layers:
                layer.ffn.forward = types.MethodType(moe_forward(mode), layer.ffn)
            print(json.dumps({"model": path, "shape": f"S{carve['shared']}A{carve['active']}E{carve['experts']}",
                              "ffn_active": carve["active_ffn_share"], "mode": mode, "ppl": perplexity(model, ids)}),
                  flush=True)
    model, tok, _ = load_model(a.dense)
    for share in sorted(shares) + [1.0]:
        for layer in model.layers:
            layer.ffn.forward = types.MethodType(neuron_oracle(share), layer.ffn)
        print(json.dumps({"model": a.dense, "shape": "dense", "ffn_active": share, "mode": "neuron-oracle",
                          "ppl": perplexity(model, ids)}), flush=True)


if __name__ == "__main__":
    main()
