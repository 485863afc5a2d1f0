"""The decode loop over an artifact: embedding rows from a safetensors file, per layer the backbone
program, the router's top-k, the experts (loaded on a miss), then the head. A PEER layer (rows.py) has
no experts: its program's sub-key scores pick rows of its pool, read from flash under the same budget.

Data flow per layer l, for the T tokens of this step (see export/programs.py for the programs):
  h, x, logits, k, v = layer_l(h, cos, sin, k_past_l, v_past_l, mask)   (k_past: the filled cache rows)
  cache k, v at the tokens' positions; route x by logits; h += sum_k w_k * expert_k(x)
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from cosmoe_edge.errors import RequestError
from cosmoe_edge.runtime.backends import import_runtime, open_program
from cosmoe_edge.runtime.cache import ExpertCache
from cosmoe_edge.runtime.kv import KVCache, attention_mask, rope_rows
from cosmoe_edge.runtime.manifest import backend_section, check_file, load_manifest
from cosmoe_edge.runtime.policies import DEFAULT
from cosmoe_edge.runtime.routing import RoutingLog, route, route_cmoe
from cosmoe_edge.runtime.rows import PeerLayers
from cosmoe_edge.runtime.selection import SelectionCounts, Sticky, resolve, select
from cosmoe_edge.runtime.store import ExpertStore


class Engine:
    def __init__(self, artifact, backend: str = "onnx", *, budget_bytes: int | None = None, policy: str = DEFAULT,
                 verify: bool = True, prefetch: bool = False, threads: int = 1, trace: bool = False,
                 on_cache_event=None, experts_per_token: int | None = None, on_miss: str = "wait",
                 skip_below: float = 0.5, cache_bias: float = 0.0):
        self.artifact = Path(artifact)
        self.manifest = m = load_manifest(self.artifact)
        self.backend = backend
        section = backend_section(m, backend)
        cfg = self.cfg = m["model"]
        self.top_k, self.n_layers = cfg["top_k"], cfg["n_layers"]
        self.renorm = cfg.get("router_renorm", True)  # absent from manifests written before it existed
        spec = m.get("routing", {"kind": "softmax"})
        self.cmoe = spec["kind"] == "cmoe"
        if self.cmoe:
            self.bias = np.asarray(spec["selection_bias"], dtype=np.float32)
            self.scale = np.asarray(spec["weight_scale"], dtype=np.float32)
            if prefetch:
                raise RequestError("prefetch guesses with a linear router; this model's router is CMoE's (edge-carve)")
        self.vectors = None
        if "compressed_experts" in m:  # compressed experts: always resident, (E,D) per layer
            t = load_file(str(check_file(self.artifact, m["compressed_experts"], verify)))
            self.vectors = [t[f"layer_{i}"] for i in range(self.n_layers)]
        self.selection = resolve(cfg, self.vectors is not None, experts_per_token, on_miss, skip_below, cache_bias,
                                 self.cmoe)
        self.counts = SelectionCounts()
        delta = cfg.get("sticky_delta", 0.0)  # the model's sticky top-k (ModelConfig.sticky_delta), per layer
        self.sticky = [Sticky(delta, np.zeros(cfg["num_experts"], np.float32)) for _ in range(self.n_layers)] \
            if delta else None
        self.max_seq_len = cfg["max_seq_len"]
        self.chunk = m["layer_max_tokens"]
        self.expert_chunk = m["expert_max_tokens"]
        self.rep = cfg["n_heads"] // cfg["n_kv_heads"]
        self.trace = trace
        import_runtime(backend, threads)

        self.embedding = self._load_embedding(verify)
        self.routers = None
        if prefetch:
            self.routers = load_file(str(check_file(self.artifact, m["routers"], verify)))
        self.parts = {}
        programs = {}
        for f in section["backbone"]["files"]:
            path = check_file(self.artifact, f, verify)
            methods = [p["method"] for p in section["backbone"]["parts"].values() if p["path"] == f["path"]]
            programs[f["path"]] = open_program(backend, path, methods, threads, sha_checked=verify)
        for name, p in section["backbone"]["parts"].items():
            self.parts[name] = (programs[p["path"]], p["method"])

        self.store = ExpertStore(self.artifact, backend, section, verify, threads)
        self.peer = PeerLayers(self.artifact, m["peer"], cfg["dim"], verify) if "peer" in m else None
        experts_total = self.store.total_cost()
        rows_total = self.peer.total_bytes if self.peer else 0
        self.expert_bytes_total = experts_total + rows_total  # all that loads lazily: experts and PEER rows
        k_run = self.selection.experts_per_token
        experts_min = k_run * self.store.max_load_cost() if self.store.entries else 0
        rows_min = self.peer.min_budget() if self.peer else 0
        self.min_budget = experts_min + rows_min
        self.budget = self.expert_bytes_total if budget_bytes is None else budget_bytes
        if self.budget < self.min_budget:
            raise RequestError(f"memory budget {self.budget:,} bytes is below the minimum of {self.min_budget:,} "
                               f"bytes (the {k_run} largest experts a layer may need at once"
                               + (", and the rows one token reads in its PEER layers)" if self.peer else ")"), "budget_too_small")
        rows_budget = split_budget(self.budget, rows_total, self.expert_bytes_total, rows_min, experts_min)
        self.cache = ExpertCache(self.store, self.budget - rows_budget, policy, (self.n_layers, cfg["num_experts"]),
                                 on_cache_event)
        if self.peer:
            self.peer.open(rows_budget)
        self.prefetcher = ThreadPoolExecutor(1) if prefetch else None
        self.prefetch_issued = 0
        self.prefetch_pending = None
        self.cos, self.sin = rope_rows(cfg["head_dim"], self.max_seq_len, cfg["rope_theta"])
        self.kv = KVCache(self.n_layers, cfg["n_kv_heads"], self.max_seq_len, cfg["head_dim"])
        self.pos = 0
        self.routing = RoutingLog()

    def preload(self):
        """Load every expert (and PEER row) now (what a runtime without lazy loading does), as far as the
        budget allows; the caches' counters then start from zero."""
        self.cache.fill(sorted(self.store.entries))
        self.cache.reset_counters()
        if self.peer:
            self.peer.cache.fill()

    def _load_embedding(self, verify):
        e = self.manifest["embedding"]
        t = load_file(str(check_file(self.artifact, e, verify)))
        self.embedding_scale = t.get("scale")
        return t["weight"]

    def embed(self, ids) -> np.ndarray:
        rows = self.embedding[np.asarray(ids)]
        if self.embedding_scale is None:
            return rows.astype(np.float32)
        return rows.astype(np.float32) * self.embedding_scale[np.asarray(ids)][:, None]

    def reset(self):
        """Start a new sequence. Old cache rows need no clearing: only rows < pos are ever passed."""
        self.pos = 0
        self.routing = RoutingLog()
        for s in self.sticky or ():
            s.reset()

    def forward(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Run `ids` at the next positions; logits of the last token (or all, with all_logits)."""
        if self.pos + len(ids) > self.max_seq_len:
            raise RequestError(f"sequence would exceed the model's {self.max_seq_len} positions", "too_long")
        logits = []
        for i in range(0, len(ids), self.chunk):
            h = self._step(ids[i:i + self.chunk])
            if all_logits or i + self.chunk >= len(ids):
                logits.append(self._run("head", [h if all_logits else h[-1:]])[0])
        return np.concatenate(logits) if len(logits) > 1 else logits[0]

    def _run(self, part, inputs):
        program, method = self.parts[part]
        return program.run(method, inputs)

    def _step(self, ids) -> np.ndarray:
        T, p0 = len(ids), self.pos
        h = self.embed(ids)
        mask = attention_mask(p0, T, self.rep)
        cos, sin = self.cos[p0:p0 + T], self.sin[p0:p0 + T]
        for layer in range(self.n_layers):
            k_past, v_past = self.kv.past(layer, p0)
            h, x, logits, k, v = self._run(f"layer_{layer}", [h, cos, sin, k_past, v_past, mask])
            self.kv.write(layer, p0, k, v)
            if self.peer and layer in self.peer.layers:  # logits: the PEER layer's sub-key scores
                h = h + self.peer.forward(layer, x, logits)
                continue
            theta = None
            if self.cmoe:
                experts, weights = route_cmoe(logits, self.top_k, self.bias[layer], self.scale[layer])
                self.counts.experts_run += experts.size
            else:
                resident = None
                if self.selection.needs_residency():
                    resident = np.array([self.cache.is_resident((layer, e)) for e in range(logits.shape[1])])
                experts, weights, theta = select(logits, self.top_k, self.renorm, self.selection,
                                                 None if self.vectors is None else self.vectors[layer], resident,
                                                 self.counts, None if self.sticky is None else self.sticky[layer])
            self.routing.add(layer, p0, logits, experts, self.trace)
            self._prefetch_next(layer, x)
            h = h + self._experts(layer, x if theta is None else x * theta.astype(np.float32), experts, weights)
        self.pos += T
        return h

    def _experts(self, layer, x, experts, weights) -> np.ndarray:
        """sum over each token's k experts of weight * expert(x) (an expert id of -1 does not run); every
        expert runs once on all of its tokens (in slices of the program's maximum), resident experts first,
        then by id. The sum is taken in expert-id order whatever ran first: float addition is not
        associative, and with k > 2 an order that followed residency made the output depend on the budget."""
        resident = self.cache.is_resident
        if len(x) == 1:  # decode: one token, k distinct experts, no gathering
            row, ys = experts[0].tolist(), {}
            runs = [s for s in range(len(row)) if row[s] >= 0]
            for slot in sorted(runs, key=lambda s: (not resident((layer, row[s])), row[s])):
                key = (layer, row[slot])
                ys[row[slot]] = np.float32(weights[0, slot]) * self.cache.get(key, pinned=frozenset({key})).run(
                    "forward", [x])[0]
            out = None
            for e in sorted(ys):
                out = ys[e] if out is None else out + ys[e]
            return out
        ys = {}
        for e in sorted({int(e) for e in experts.ravel() if e >= 0}, key=lambda e: (not resident((layer, e)), e)):
            key = (layer, e)
            program = self.cache.get(key, pinned=frozenset({key}))
            rows, slots = np.nonzero(experts == e)
            y = np.empty((len(rows), x.shape[1]), dtype=np.float32)
            for i in range(0, len(rows), self.expert_chunk):
                r, s = rows[i:i + self.expert_chunk], slots[i:i + self.expert_chunk]
                y[i:i + len(r)] = weights[r, s, None].astype(np.float32) * program.run(
                    "forward", [np.ascontiguousarray(x[r])])[0]
            ys[e] = rows, y
        out = np.zeros_like(x)
        for e in sorted(ys):
            rows, y = ys[e]
            out[rows] += y
        return out

    def _prefetch_next(self, layer, x):
        """Guess layer+1's experts by applying its router to this layer's expert input, and load
        them on a background thread while this layer's experts run (mixtral-offloading's trick).
        A prefetch pins only the layer whose experts run beside it, so the previous one must end
        before this layer's experts run: otherwise it could evict (and release) one in use."""
        if self.prefetcher is None:
            return
        if self.prefetch_pending is not None:
            self.prefetch_pending.result()  # also raises a failed load here, not silently
            self.prefetch_pending = None
        if layer + 1 >= self.n_layers or f"layer_{layer + 1}" not in self.routers:  # the last, or a PEER layer
            return
        w = self.routers[f"layer_{layer + 1}"]
        guess = np.unique(route(x @ w.T, self.selection.experts_per_token)[0])
        keys = [(layer + 1, int(e)) for e in guess if not self.cache.is_resident((layer + 1, int(e)))]
        if not keys:
            return
        self.prefetch_issued += len(keys)

        current = frozenset((layer, int(e)) for e in range(self.cfg["num_experts"]))

        def load():
            for key in keys:
                self.cache.prefetch(key, pinned=current)

        self.prefetch_pending = self.prefetcher.submit(load)

    def close(self):
        """Wait for prefetches, then release every program (a long-lived process may run many)."""
        if self.prefetcher is not None:
            self.prefetcher.shutdown()
        self.cache.release_all()
        self.store.close()
        if self.peer:
            self.peer.close()
        for program, _ in self.parts.values():
            program.release()


def split_budget(budget: int, rows_total: int, total: int, rows_min: int, experts_min: int) -> int:
    """The PEER rows' part of `budget`: their share of all lazily loaded bytes, moved as far as needed for
    each side to get its minimum (the budget holds both minimums: checked before)."""
    if not rows_total:
        return 0
    share = budget * rows_total // total
    return min(max(share, rows_min), budget - experts_min)
