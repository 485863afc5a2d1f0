"""Held-out loss/perplexity and the routing figures that matter on a device: expert usage and
the expert switch rate per layer, and each PEER layer's pool usage."""

import math

import torch
import torch.nn.functional as F

from cosmoe_edge.model.losses import switch_rate
from cosmoe_edge.model.peer import usage as peer_usage


@torch.no_grad()
def evaluate(model, x, y, batch: int = 8) -> dict:
    """x, y: (N, T) windows. Returns loss, ppl, and per-layer expert usage and switch rate
    (MoE layers only; each layer's usage is the share of top-k slots per expert), and per PEER layer the share of
    its pool retrieved at least once and the KL of its retrievals from uniform (peer_usage)."""
    model.eval()
    total, count = 0.0, 0
    usage, switches = None, None
    peer = model.peer_layers()
    peer_ids = [[] for _ in peer]
    for i in range(0, len(x), batch):
        logits, routings = model(x[i:i + batch])
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i:i + batch].flatten(), reduction="sum").item()
        count += y[i:i + batch].numel()
        for ids, layer in zip(peer_ids, peer, strict=True):
            ids.append(layer.last_ids)
        moe = [r for r in routings if r is not None]
        if not moe:
            continue
        n = len(x[i:i + batch])
        counts = torch.stack([torch.bincount(r.experts.flatten(), minlength=r.probs.shape[-1]) for r in moe])
        usage = counts if usage is None else usage + counts
        rates = torch.stack([switch_rate(r.experts) * n for r in moe])
        switches = rates if switches is None else switches + rates
    loss = total / count
    out = {"loss": loss, "ppl": math.exp(loss)}
    if peer:
        out["peer_usage"] = [peer_usage(torch.cat(ids), layer.w_in.num_embeddings)
                             for ids, layer in zip(peer_ids, peer, strict=True)]
    if usage is not None:
        out["expert_usage"] = (usage / usage.sum(-1, keepdim=True)).tolist()
        out["switch_rate"] = (switches / len(x)).tolist()
        out["switch_rate_mean"] = sum(out["switch_rate"]) / len(out["switch_rate"])
    return out
