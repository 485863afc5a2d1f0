"""Routing as the manifest states it (calling_convention.router): softmax over the router logits,
the top_k experts by probability (ties to the lower expert id), weights renormalised over the k
unless the model's router_renorm is false (then the probabilities themselves).
The Android core's Router follows the same rule (tests/conformance/generation.json route_cases)."""

from dataclasses import dataclass, field

import numpy as np


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def route(logits: np.ndarray, top_k: int, renorm: bool = True):
    """Experts (T, k) by descending probability, and their weights (renormalised over the k if renorm)."""
    if len(logits) == 1:  # decode: the same arithmetic on one row, without the batched gathers' cost
        probs = softmax(logits[0].astype(np.float32))
        experts = np.argsort(-probs, kind="stable")[:top_k]
        w = probs[experts]
        return experts[None], (w / w.sum() if renorm else w)[None]
    probs = softmax(logits.astype(np.float32))
    experts = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(probs, experts, -1)
    return experts, w / w.sum(-1, keepdims=True) if renorm else w


def route_cmoe(scores: np.ndarray, top_k: int, bias: np.ndarray, scale: np.ndarray):
    """CMoE's routing (manifest routing.kind "cmoe"): p = softmax(scores); the top_k of p + bias (ties to
    the lower expert id), weighted 1 + scale * p."""
    probs = softmax(scores.astype(np.float32))
    experts = np.argsort(-(probs + bias), axis=-1, kind="stable")[:, :top_k]
    return experts, 1 + np.take_along_axis(probs, experts, -1) * scale[experts]


@dataclass
class RoutingLog:
    """Per layer, the expert sets of consecutive tokens, for the switch rate; with `trace`, every
    step's router logits and choices (the conformance vectors the Android core replays)."""
    last: dict = field(default_factory=dict)
    pairs: int = 0
    switched: int = 0
    trace: list = field(default_factory=list)

    def add(self, layer: int, pos0: int, logits: np.ndarray, experts: np.ndarray, keep_trace: bool):
        for row in experts:
            s = {int(e) for e in row if e >= 0}  # -1: chosen but not run (runtime/selection.py)
            prev = self.last.get(layer)
            if prev is not None:
                self.pairs += len(s)
                self.switched += len(s - prev)
            self.last[layer] = s
        if keep_trace:
            self.trace.append({"pos0": pos0, "layer": layer, "router_logits": logits.tolist(),
                               "experts": experts.tolist()})

    @property
    def switch_rate(self) -> float:
        return self.switched / self.pairs if self.pairs else 0.0
