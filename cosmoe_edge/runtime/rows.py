"""PEER layers at run time (export/peer_rows.py wrote their pools): retrieval from the layer program's sub-key
scores, and the retrieved experts' rows read from flash a page at a time into an LRU over rows bounded by bytes.

A token of a PEER layer touches heads * top_k records (u_i | v_i); a miss costs a pread of a page, never a
program.
"""

import hashlib
import math
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from cosmoe_edge.errors import ArtifactError, RequestError
from cosmoe_edge.runtime.manifest import check_file

_erf = np.frompyfunc(math.erf, 1, 1)
ACTIVATIONS = {"gelu": lambda a: 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0)).astype(np.float64)),
               "relu": lambda a: np.maximum(a, 0.0)}


FREE = np.iinfo(np.int64).max  # the stamp of a free slot: never taken for the least recent


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest along the last axis, descending: (values, indices)."""
    idx = np.argpartition(-scores, k - 1, axis=-1)[..., :k] if k < scores.shape[-1] else \
        np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    vals = np.take_along_axis(scores, idx, -1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(vals, order, -1), np.take_along_axis(idx, order, -1)


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
    """Rows of the PEER layers' pools under `budget` bytes, held in one preallocated slab (so RSS follows the
    budget), least recently used evicted first. Storage is read a page at a time (the unit flash reads); the
    rows a token asked for enter as the most recent, and the page's other rows only fill free slots, as the
    least recent: they are the first to go (replayed on the PEER arm's held-out text with 10% of its pool,
    106 KB read per token against 284 KB for an LRU over whole pages: scripts/peer_row_sim.py). With
    `hashes`, each page's sha256 is checked on its first read (a whole-file check would read the pool).
    Bookkeeping is in arrays (a slot per row, a last-use tick per slot), so a token costs a few numpy calls,
    not a Python loop over its rows."""

    def __init__(self, files: dict[int, tuple[Path, int]], page_bytes: int, budget: int,
                 hashes: dict[int, np.ndarray] | None = None):
        """files: layer -> (path, record bytes); hashes: layer -> (pages, 32) sha256 digests."""
        self.fds = {layer: os.open(path, os.O_RDONLY) for layer, (path, _) in files.items()}
        for fd in self.fds.values():  # rows are read at random: readahead would read pages nobody asked for
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.paths = {layer: path for layer, (path, _) in files.items()}
        self.record = {layer: rb for layer, (_, rb) in files.items()}
        self.per_page = {layer: max(1, page_bytes // rb) for layer, rb in self.record.items()}
        self.slot_bytes = max(self.record.values())
        self.budget = budget
        self.capacity = budget // self.slot_bytes
        self.slab = np.empty((self.capacity, self.slot_bytes), np.uint8)  # pages become resident as slots fill
        rows = {layer: os.fstat(fd).st_size // self.record[layer] for layer, fd in self.fds.items()}
        self.slot_of = {layer: np.full(n, -1, np.int64) for layer, n in rows.items()}  # row -> slot, -1: not resident
        self.owner = np.full((self.capacity, 2), -1, np.int64)  # slot -> (layer, row)
        self.stamp = np.full(self.capacity, FREE, np.int64)  # slot -> last use tick (neighbours: 0, never used)
        self.free = list(range(self.capacity - 1, -1, -1))
        self.tick = 0
        self.hashes, self.verified = hashes, {layer: set() for layer in files}
        self.peak_bytes = 0
        self.rows_used = self.hits = self.misses = self.pages_read = self.bytes_read = 0

    @property
    def bytes(self) -> int:
        return (self.capacity - len(self.free)) * self.slot_bytes

    def resident(self, layer: int) -> list[int]:
        return np.flatnonzero(self.slot_of[layer] >= 0).tolist()

    def records(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """The records of `ids` (M,) as (M, record bytes) uint8, reading the pages of those not resident."""
        wanted = np.unique(ids)
        if len(wanted) > self.capacity:
            raise RequestError(f"row budget of {self.budget:,} bytes cannot hold the {len(wanted)} rows one token "
                               f"needs in layer {layer}", "budget_too_small")
        self.tick += 1
        slot_of = self.slot_of[layer]
        slots = slot_of[wanted]
        self.stamp[slots[slots >= 0]] = self.tick
        missing = wanted[slots < 0]
        self.rows_used += len(ids)
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        if len(self.free) < len(missing):  # this token's rows carry the newest tick: never evicted here
            self._evict(len(missing) - len(self.free))
        per, rb = self.per_page[layer], self.record[layer]
        if len(missing):
            blocks, rows = [], []
            for first, count in runs(np.unique(missing // per).tolist()):  # consecutive pages in one read
                blocks.append(np.frombuffer(self._read(layer, first, count), np.uint8).reshape(-1, rb))
                rows.append(np.arange(first * per, first * per + len(blocks[-1])))
            block, rows = np.concatenate(blocks), np.concatenate(rows)
            asked = np.isin(rows, missing, assume_unique=True)
            neighbours = np.flatnonzero(~asked & (slot_of[rows] < 0))[:len(self.free) - len(missing)]
            self._place(layer, rows[asked], block[asked], self.tick)
            self._place(layer, rows[neighbours], block[neighbours], 0)
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return self.slab[slot_of[ids], :rb]

    def fill(self, chunk_pages: int = 256):
        """Read the pools in order while their rows fit in free slots (--preload); counters start from zero."""
        for layer in self.fds:
            per, rb = self.per_page[layer], self.record[layer]
            pages = -(-len(self.slot_of[layer]) // per)
            for first in range(0, pages, chunk_pages):
                if not self.free:
                    break
                block = np.frombuffer(self._read(layer, first, min(chunk_pages, pages - first)), np.uint8)
                block = block.reshape(-1, rb)[:len(self.free)]
                self._place(layer, np.arange(first * per, first * per + len(block)), block, 0)
        self.peak_bytes = self.bytes
        self.rows_used = self.hits = self.misses = self.pages_read = self.bytes_read = 0

    def _place(self, layer: int, rows: np.ndarray, records: np.ndarray, stamp: int):
        """Put `records` of `rows` into free slots, last used at `stamp` (0: never used)."""
        new = np.array([self.free.pop() for _ in range(len(rows))], np.int64)
        self.slot_of[layer][rows] = new
        self.owner[new, 0], self.owner[new, 1] = layer, rows
        self.stamp[new] = stamp
        self.slab[new, :records.shape[1]] = records

    def _evict(self, n: int):
        victims = np.argpartition(self.stamp, n - 1)[:n]  # the n least recent (free slots are stamped FREE)
        for layer, row in self.owner[victims].tolist():
            self.slot_of[layer][row] = -1
        self.owner[victims] = -1
        self.stamp[victims] = FREE
        self.free += victims.tolist()

    def _read(self, layer: int, first: int, count: int) -> bytes:
        page = self.per_page[layer] * self.record[layer]
        data = os.pread(self.fds[layer], count * page, first * page)
        self.pages_read += count
        self.bytes_read += len(data)
        if self.hashes is not None:
            for p in range(first, first + count):
                if p in self.verified[layer]:
                    continue
                digest = hashlib.sha256(data[(p - first) * page:(p - first + 1) * page]).digest()
                if digest != self.hashes[layer][p].tobytes():
                    raise ArtifactError(f"page {p} of {self.paths[layer].name} does not match its sha256: corrupt "
                                        "file", "sha_mismatch")
                self.verified[layer].add(p)
        return data

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.slab = np.empty((0, self.slot_bytes), np.uint8)


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
        # the pools are checked page by page as they are read (RowCache); here only their sizes
        self.paths = {int(i): (check_file(artifact, e, False), e["record_bytes"]) for i, e in section["layers"].items()}
        self.hashes = None
        if verify:
            self.hashes = {int(i): np.fromfile(check_file(artifact, e["page_sha256"], True), np.uint8).reshape(-1, 32)
                           for i, e in section["layers"].items()}
        self.scales = load_file(str(check_file(artifact, section["scales"], verify))) if "scales" in section else {}
        self.total_bytes = sum(e["bytes"] for e in section["layers"].values())
        self.cache = None

    def min_budget(self) -> int:
        """The rows of one token: heads * top_k."""
        return self.heads * self.k * max(rb for _, rb in self.paths.values())

    def open(self, budget: int):
        self.cache = RowCache(self.paths, self.section["page_bytes"], budget, self.hashes)

    def forward(self, layer: int, x: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The PEER layer's output (T, D) for its input x (T, D), one token at a time (so one token's rows are
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


ROWS_REPORT = ("budget_bytes", "total_bytes", "resident_bytes_peak", "rows_used", "row_hits", "row_misses",
               "pages_read", "bytes_read", "bytes_read_decode")


def rows_report(peer, read_at_first: int | None) -> dict:
    """The report's rows object: the PEER layers' row cache (zeros for an artifact without PEER layers)."""
    if peer is None:
        return dict.fromkeys(ROWS_REPORT, 0)
    c = peer.cache
    return {"budget_bytes": c.budget, "total_bytes": peer.total_bytes, "resident_bytes_peak": c.peak_bytes,
            "rows_used": c.rows_used, "row_hits": c.hits, "row_misses": c.misses, "pages_read": c.pages_read,
            "bytes_read": c.bytes_read,
            "bytes_read_decode": c.bytes_read - (c.bytes_read if read_at_first is None else read_at_first)}
