"""PEER layers at run time (export/peer_rows.py wrote their pools): retrieval from the layer program's sub-key
scores, and the retrieved experts' rows read from flash a page at a time into an LRU bounded by bytes.

A token of a PEER layer touches heads * top_k records (u_i | v_i); the cache holds pages (page_bytes of
consecutive records), so neighbours come along with a read, and a miss costs a pread, never a program.
"""

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from cosmoe_edge.errors import RequestError
from cosmoe_edge.runtime.manifest import check_file

_erf = np.frompyfunc(math.erf, 1, 1)
ACTIVATIONS = {"gelu": lambda a: 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0)).astype(np.float64)),
               "relu": lambda a: np.maximum(a, 0.0)}


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest along the last axis, descending (ties to the lower index): (values, indices)."""
    idx = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(scores, idx, -1), idx


def retrieve(scores: np.ndarray, heads: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-key scores (T, heads*2*n) -> expert ids (T, heads, k) and router weights (T, heads, k): the top-k
    of each half, then of the k^2 sums (the product-key search of model/peer.py), softmax over the k."""
    s = scores.reshape(-1, heads, 2, n)
    s1, i1 = top_k(s[:, :, 0], k)
    s2, i2 = top_k(s[:, :, 1], k)
    best, pair = top_k((s1[..., :, None] + s2[..., None, :]).reshape(*s1.shape[:-1], k * k), k)
    ids = np.take_along_axis(i1, pair // k, -1) * n + np.take_along_axis(i2, pair % k, -1)
    w = np.exp(best - best[..., :1])
    return ids, (w / w.sum(-1, keepdims=True)).astype(np.float32)


class RowCache:
    """Pages of the PEER layers' row files under `budget` bytes, least recently used evicted first. Counts
    row lookups, page hits and misses, and the bytes it read (what a miss costs: pread, no program)."""

    def __init__(self, files: dict[int, tuple[Path, int]], page_bytes: int, budget: int):
        """files: layer -> (path, record bytes)."""
        self.fds = {layer: os.open(path, os.O_RDONLY) for layer, (path, _) in files.items()}
        self.record = {layer: rb for layer, (_, rb) in files.items()}
        self.per_page = {layer: max(1, page_bytes // rb) for layer, rb in self.record.items()}
        self.budget = budget
        self.pages: OrderedDict = OrderedDict()  # (layer, page) -> (records, record bytes) uint8
        self.bytes = self.peak_bytes = 0
        self.rows_used = self.hits = self.misses = self.bytes_read = 0

    def page_cost(self, layer: int) -> int:
        return self.per_page[layer] * self.record[layer]

    def records(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """The records of `ids` (M,) as (M, record bytes) uint8, reading the pages not resident."""
        per = self.per_page[layer]
        pages = ids // per
        needed = np.unique(pages).tolist()
        cost = self.page_cost(layer)
        if len(needed) * cost > self.budget:
            raise RequestError(f"row budget of {self.budget:,} bytes cannot hold the {len(needed)} pages one token "
                               f"needs in layer {layer}", "budget_too_small")
        missing = []
        for p in needed:
            if (layer, p) in self.pages:
                self.pages.move_to_end((layer, p))
            else:
                missing.append(p)
        self.rows_used += len(ids)
        self.hits += len(needed) - len(missing)
        self.misses += len(missing)
        while self.bytes + len(missing) * cost > self.budget:  # the needed pages are the newest: never evicted here
            (old_layer, _), _ = self.pages.popitem(last=False)
            self.bytes -= self.page_cost(old_layer)
        for first, count in runs(missing):  # consecutive pages in one read
            data = os.pread(self.fds[layer], count * cost, first * cost)
            self.bytes_read += len(data)
            block = np.frombuffer(data, dtype=np.uint8)
            for j in range(count):
                page = block[j * cost:(j + 1) * cost]
                self.pages[(layer, first + j)] = page.reshape(-1, self.record[layer])  # the last page may be short
                self.bytes += cost
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return np.stack([self.pages[(layer, int(p))][int(i) % per] for p, i in zip(pages, ids, strict=True)])

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.pages.clear()
        self.bytes = 0


def runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, count) runs of consecutive pages."""
    out = []
    for p in pages:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


class PeerLayers:
    """Every PEER layer of an artifact: its retrieval and its pool, read through one RowCache."""

    def __init__(self, artifact: Path, section: dict, dim: int, verify: bool):
        self.section, self.dim = section, dim
        self.heads, self.k, self.n = section["heads"], section["top_k"], section["sub_keys"]
        self.act = ACTIVATIONS[section["activation"]]
        self.layers = {int(i) for i in section["layers"]}
        self.paths = {int(i): (check_file(artifact, e, verify), e["record_bytes"]) for i, e in section["layers"].items()}
        self.scales = load_file(str(check_file(artifact, section["scales"], verify))) if "scales" in section else {}
        self.total_bytes = sum(e["bytes"] for e in section["layers"].values())
        self.cache = None

    def min_budget(self) -> int:
        """One token's worst case: each of its heads * top_k experts on a page of its own."""
        page = max(max(1, self.section["page_bytes"] // rb) * rb for _, rb in self.paths.values())
        return self.heads * self.k * page

    def open(self, budget: int):
        self.cache = RowCache(self.paths, self.section["page_bytes"], budget)

    def forward(self, layer: int, x: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The PEER layer's output (T, D) for its input x (T, D), one token at a time (so a token's pages are
        all that must fit, and the arithmetic is the same at every budget)."""
        ids, weights = retrieve(scores, self.heads, self.k, self.n)
        out = np.empty_like(x)
        D = self.dim
        for t in range(len(x)):
            flat = ids[t].ravel()
            rec = self.cache.records(layer, flat)
            if self.section["dtype"] == "fp32":
                rows = rec.view(np.float32)
                u, v = rows[:, :D], rows[:, D:]
            else:
                q = rec.view(np.int8).astype(np.float32)
                u = q[:, :D] * self.scales[f"layer_{layer}.u"][flat, None]
                v = q[:, D:] * self.scales[f"layer_{layer}.v"][flat, None]
            a = self.act((u @ x[t]).astype(np.float64)).astype(np.float32) * weights[t].ravel()
            out[t] = a @ v
        return out

    def close(self):
        if self.cache is not None:
            self.cache.close()


def rows_report(peer, read_at_first: int | None) -> dict:
    """The report's rows object: the PEER layers' row cache (zeros for an artifact without PEER layers)."""
    if peer is None:
        return {k: 0 for k in ("budget_bytes", "total_bytes", "resident_bytes_peak", "rows_used", "page_hits",
                               "page_misses", "bytes_read", "bytes_read_decode")}
    c = peer.cache
    return {"budget_bytes": c.budget, "total_bytes": peer.total_bytes, "resident_bytes_peak": c.peak_bytes,
            "rows_used": c.rows_used, "page_hits": c.hits, "page_misses": c.misses, "bytes_read": c.bytes_read,
            "bytes_read_decode": c.bytes_read - (c.bytes_read if read_at_first is None else read_at_first)}
