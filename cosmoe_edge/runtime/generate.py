"""Sampling and the generation loop, timed: what edge-run streams and reports."""

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sampler:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """Greedy at temperature 0; else temperature, then top-k, then nucleus (top-p) filtering."""
        if self.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        p = p[order]
        keep = np.ones_like(p, dtype=bool)
        if self.top_k > 0:
            keep[self.top_k:] = False
        if self.top_p < 1.0:
            keep &= (np.cumsum(p) - p) < self.top_p
        p = np.where(keep, p, 0.0)
        return int(order[self.rng.choice(len(p), p=p / p.sum())])


@dataclass
class Timings:
    prefill_ns: int = 0
    token_ns: list = field(default_factory=list)  # decode steps only

    @property
    def ttft_ms(self) -> float:
        return self.prefill_ns / 1e6


def generate(engine, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler, eos: int | None = None,
             on_token=None, keep_logits: bool = False):
    """Prefill the prompt, then decode. Returns (new ids, Timings, logits per new token or None).
    Time to first token covers the prefill and the first token's sampling."""
    engine.reset()
    room = engine.max_seq_len - len(prompt_ids)
    max_new_tokens = max(0, min(max_new_tokens, room))
    timings, out, all_logits = Timings(), [], []
    if max_new_tokens == 0:
        return out, timings, all_logits if keep_logits else None
    t = time.perf_counter_ns()
    logits = engine.forward(prompt_ids)[-1]
    while True:
        token = sampler(logits)
        now = time.perf_counter_ns()
        if not out:
            timings.prefill_ns = now - t
        else:
            timings.token_ns.append(now - t)
        out.append(token)
        if keep_logits:
            all_logits.append(logits)
        if on_token is not None:
            on_token(token)
        if token == eos or len(out) >= max_new_tokens:
            break
        t = time.perf_counter_ns()
        logits = engine.forward([token])[-1]
    return out, timings, (np.stack(all_logits) if keep_logits else None)
