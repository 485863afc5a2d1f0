"""Which experts run for each token, and with what weights: the router's top-k (routing.py), then the
run's choices on top of it. Each is off by default, and with all of them off the result is route()'s.

- sticky top-k (the model's sticky_delta, not a run choice: it was trained with it): each token's top-k is
  taken of its logits plus delta for each expert the previous token selected in that layer (Sticky holds it).
- cache bias (--cache-bias D, arXiv 2412.00099): the top-k is taken of the router logits plus D for each
  resident expert; the weights stay the unbiased probabilities of the chosen experts.
- experts per token (--experts-per-token K): the K highest-ranked of the top-k run; the others stand in as
  compressed experts (their vectors scale the input of the ones that run) when the artifact has vectors,
  else they are dropped.
- on a miss (--on-miss): `wait` loads it; `compressed` makes a selected expert that is not resident a
  stand-in instead; `skip` drops it when its weight is below --skip-below. Neither ever touches a token's
  first-ranked expert, which always runs.
Weights are renormalised over the experts that run (when the model renormalises), and stand-ins' weights
over the stand-ins, exactly as the model's compressed-expert forward (model.compress) does.
"""

from dataclasses import dataclass

import numpy as np

from cosmoe_edge.errors import RequestError
from cosmoe_edge.runtime.routing import route, softmax

ON_MISS = ("wait", "compressed", "skip")


@dataclass(frozen=True)
class Selection:
    """The run's choices; experts_per_token is resolved against the model (its k_main, else its top_k)."""
    experts_per_token: int
    on_miss: str = "wait"
    skip_below: float = 0.5
    cache_bias: float = 0.0

    def needs_residency(self) -> bool:
        return self.on_miss != "wait" or self.cache_bias != 0.0


@dataclass
class Sticky:
    """One layer's sticky top-k state: the model's delta, and a 0/1 mask of the experts the previous token
    selected (zeros at a sequence's start: reset())."""
    delta: float
    prev: np.ndarray  # (E,) float32

    def reset(self):
        self.prev[:] = 0


@dataclass
class SelectionCounts:
    """What the choices did, summed over tokens and layers (the report's `selection`)."""
    experts_run: int = 0  # expert calls for a token (a program run on that token's row)
    compressed: int = 0  # experts that stood in as compressed vectors, by --experts-per-token or by a miss
    misses_compressed: int = 0  # of those, selected experts that were not resident (--on-miss compressed)
    misses_skipped: int = 0  # selected experts not resident and below --skip-below, dropped (--on-miss skip)
    bias_changed: int = 0  # token-layers whose top-k set the cache bias changed

    def as_dict(self) -> dict:
        return dict(vars(self))


def report_entry(s: Selection, counts: SelectionCounts) -> dict:
    """The report's `selection`: the choices, then the counts."""
    return dict(vars(s)) | counts.as_dict()


def check_choices(experts_per_token: int | None, on_miss: str, skip_below: float, cache_bias: float):
    """RequestError for choices no model could take."""
    if experts_per_token is not None and experts_per_token < 1:
        raise RequestError(f"--experts-per-token must be at least 1, not {experts_per_token}", "bad_option")
    if on_miss not in ON_MISS:
        raise RequestError(f"unknown --on-miss {on_miss!r}; choose {', '.join(ON_MISS)}", "bad_option")
    if not skip_below >= 0 or not cache_bias >= 0:
        raise RequestError("--skip-below and --cache-bias must be >= 0", "bad_option")


def resolve(model: dict, has_vectors: bool, experts_per_token: int | None, on_miss: str, skip_below: float,
            cache_bias: float, cmoe: bool) -> Selection:
    """Check the run's choices against the model (manifest "model"); RequestError for what it cannot do."""
    check_choices(experts_per_token, on_miss, skip_below, cache_bias)
    top_k, k_main = model["top_k"], model.get("k_main", 0)
    k = experts_per_token if experts_per_token is not None else (k_main or top_k)
    if k > top_k:
        raise RequestError(f"--experts-per-token must be between 1 and the model's top-k ({top_k}), not {k}",
                           "bad_option")
    if on_miss == "compressed" and not has_vectors:
        raise RequestError("--on-miss compressed needs compressed experts, and this artifact has none "
                           "(fine-tune them with edge-train --init-from MODEL --k-main K, then export)", "no_vectors")
    s = Selection(k, on_miss, skip_below, cache_bias)
    if cmoe and (s.needs_residency() or k != top_k):
        raise RequestError("--experts-per-token, --on-miss and --cache-bias need a softmax router; this model's "
                           "router is CMoE's (edge-carve)", "bad_option")
    return s


def biased_top_k(logits: np.ndarray, top_k: int, renorm: bool, bias: np.ndarray | None, sticky: Sticky | None):
    """route()'s experts for logits + bias (None: no bias), and for the logits without the bias (None without one).
    With sticky, row after row: each row's logits first gain delta on the experts the row before selected
    (the biased choice), and sticky.prev ends on the last row's choice."""
    if sticky is None:
        return route(logits + bias, top_k, renorm)[0], route(logits, top_k, renorm)[0]
    chosen, plain = [], []
    for z in logits:
        z = z + sticky.delta * sticky.prev
        e = route((z if bias is None else z + bias)[None], top_k, renorm)[0][0]
        if bias is not None:
            plain.append(route(z[None], top_k, renorm)[0][0])
        sticky.reset()
        sticky.prev[e] = 1
        chosen.append(e)
    return np.stack(chosen), np.stack(plain) if plain else None


def select(logits: np.ndarray, top_k: int, renorm: bool, s: Selection, vectors: np.ndarray | None,
           resident: np.ndarray | None, counts: SelectionCounts, sticky: Sticky | None = None):
    """logits (T,E); vectors (E,D) or None; resident (E,) bool when s.needs_residency(); sticky: the layer's state
    when the model has a sticky delta (updated). Returns experts (T,k) by rank with -1 for those that do not run,
    their weights (T,k), and theta (T,D), the factor of the running experts' input (None: all ones)."""
    k = s.experts_per_token
    if s.cache_bias or sticky is not None:
        bias = s.cache_bias * resident.astype(np.float32) if s.cache_bias else None
        experts, plain = biased_top_k(logits, top_k, renorm, bias, sticky)
        if bias is not None:
            counts.bias_changed += int((np.sort(experts, -1) != np.sort(plain, -1)).any(-1).sum())
    else:
        experts, weights = route(logits, top_k, renorm)
        if k == top_k and s.on_miss == "wait":
            counts.experts_run += experts.size
            return experts, weights, None
    p = np.take_along_axis(softmax(logits.astype(np.float32)), experts, -1)
    if k == top_k and s.on_miss == "wait":  # only the choice was biased: what follows would keep every expert
        counts.experts_run += experts.size
        return experts, (p / p.sum(-1, keepdims=True) if renorm else p).astype(np.float32), None
    runs = np.repeat(np.arange(top_k)[None, :] < k, len(experts), 0)
    aux = ~runs if vectors is not None else np.zeros_like(runs)
    if s.on_miss != "wait":
        miss = runs & ~resident[experts]
        miss[:, 0] = False  # a token's first-ranked expert always runs
        if s.on_miss == "skip":
            w = np.where(runs, p, 0)
            miss &= (w / w.sum(-1, keepdims=True) if renorm else w) < s.skip_below
            counts.misses_skipped += int(miss.sum())
        else:
            aux |= miss
            counts.misses_compressed += int(miss.sum())
        runs &= ~miss
    w = np.where(runs, p, 0)
    weights = w / w.sum(-1, keepdims=True) if renorm else w
    counts.experts_run += int(runs.sum())
    theta = None
    if aux.any():
        counts.compressed += int(aux.sum())
        a = np.where(aux, p, 0)
        total = a.sum(-1, keepdims=True)
        theta = np.matmul((a / np.where(total > 0, total, 1))[:, None, :], vectors[experts])[:, 0]
        theta[total[:, 0] == 0] = 1.0  # no stand-ins for this token: its input unchanged
    return np.where(runs, experts, -1), weights.astype(np.float32), theta
