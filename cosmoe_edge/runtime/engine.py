"""The decode loop over an artifact: embedding rows from a safetensors file, per layer the backbone
program, the router's top-k, the experts (loaded on a miss), then the head.

Data flow per layer l, for the T tokens of this step (see export/programs.py for the programs):
  h, x, logits, k, v = layer_l(h, cos, sin, k_past_l, v_past_l, mask)   (k_past: the filled cache rows)
  cache k, v at the tokens' positions; route x by logits; h += sum_k w_k * expert_k(x)
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.experts import ExpertCache, ExpertStore
from cosmoe_edge.runtime.kv import KVCache, attention_mask, rope_rows
from cosmoe_edge.runtime.manifest import ArtifactError, backend_section, check_file, load_manifest


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def route(logits: np.ndarray, top_k: int):
    """Experts (T, k) by descending probability, and their weights renormalised over the k."""
    if len(logits) == 1:  # decode: the same arithmetic on one row, without the batched gathers' cost
        probs = softmax(logits[0].astype(np.float32))
        experts = np.argsort(-probs, kind="stable")[:top_k]
        w = probs[experts]
        return experts[None], (w / w.sum())[None]
    probs = softmax(logits.astype(np.float32))
    experts = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(probs, experts, -1)
    return experts, w / w.sum(-1, keepdims=True)


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
            s = {int(e) for e in row}
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


class Engine:
    def __init__(self, artifact, backend: str = "onnx", budget_bytes: int | None = None, policy: str = "lru",
                 verify: bool = True, prefetch: bool = False, threads: int = 1, trace: bool = False,
                 on_cache_event=None):
        self.artifact = Path(artifact)
        self.manifest = m = load_manifest(self.artifact)
        self.backend = backend
        section = backend_section(m, backend)
        cfg = self.cfg = m["model"]
        self.top_k, self.n_layers = cfg["top_k"], cfg["n_layers"]
        self.max_seq_len = cfg["max_seq_len"]
        self.chunk = m["layer_max_tokens"]
        self.expert_chunk = m["expert_max_tokens"]
        self.rep = cfg["n_heads"] // cfg["n_kv_heads"]
        self.trace = trace
        if backend == "executorch":
            from cosmoe_edge.runtime.backends import silenced_stderr

            with silenced_stderr(force=True):  # creating or resetting the pool logs to stderr
                from executorch.extension.pybindings.portable_lib import (
                    _threadpool_get_thread_count,
                    _unsafe_reset_threadpool,
                )

                if _threadpool_get_thread_count() != threads:
                    _unsafe_reset_threadpool(threads)  # decode-sized matmuls run best on one core

        self.embedding = self._load_embedding(verify)
        self.routers = None
        if prefetch:
            self.routers = load_file(str(check_file(self.artifact, m["routers"], verify)))
        self.parts = {}
        programs = {}
        for f in section["backbone"]["files"]:
            path = check_file(self.artifact, f, verify)
            methods = [p["method"] for p in section["backbone"]["parts"].values() if p["path"] == f["path"]]
            programs[f["path"]] = open_program(backend, path, methods, threads)
        for name, p in section["backbone"]["parts"].items():
            self.parts[name] = (programs[p["path"]], p["method"])

        self.store = ExpertStore(self.artifact, backend, section["experts"], verify, threads)
        self.expert_bytes_total = sum(self.store.cost(k) for k in self.store.entries)
        self.min_budget = self.top_k * max(self.store.cost(k) for k in self.store.entries)
        budget = self.expert_bytes_total if budget_bytes is None else budget_bytes
        if budget < self.min_budget:
            raise ArtifactError(f"memory budget {budget:,} bytes is below the minimum of {self.min_budget:,} bytes "
                                f"(the {self.top_k} largest experts a layer may need at once)", "budget_too_small")
        self.cache = ExpertCache(self.store, budget, policy, on_cache_event)
        self.prefetcher = ThreadPoolExecutor(1) if prefetch else None
        self.prefetch_issued = 0
        self.prefetch_pending = None
        self.cos, self.sin = rope_rows(cfg["head_dim"], self.max_seq_len, cfg["rope_theta"])
        self.kv = KVCache(self.n_layers, cfg["n_kv_heads"], self.max_seq_len, cfg["head_dim"])
        self.pos = 0
        self.routing = RoutingLog()

    def preload(self):
        """Load every expert now (what a runtime without lazy loading does), as far as the budget allows."""
        for key in sorted(self.store.entries):
            if self.cache.bytes + self.store.cost(key) > self.cache.budget:
                break
            self.cache.get(key)
        self.cache.hits = self.cache.misses = 0

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

    def forward(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Run `ids` at the next positions; logits of the last token (or all, with all_logits)."""
        if self.pos + len(ids) > self.max_seq_len:
            raise ArtifactError(f"sequence would exceed the model's {self.max_seq_len} positions")
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
            experts, weights = route(logits, self.top_k)
            self.routing.add(layer, p0, logits, experts, self.trace)
            self._prefetch_next(layer, x)
            h = h + self._experts(layer, x, experts, weights)
        self.pos += T
        return h

    def _experts(self, layer, x, experts, weights) -> np.ndarray:
        """sum over each token's k experts of weight * expert(x); every expert runs once on all of
        its tokens (in slices of the program's maximum), resident experts first, then by id."""
        resident = self.cache.resident
        if len(x) == 1:  # decode: one token, k distinct experts, no gathering
            row, out = experts[0].tolist(), None
            for slot in sorted(range(len(row)), key=lambda s: ((layer, row[s]) not in resident, row[s])):
                key = (layer, row[slot])
                y = np.float32(weights[0, slot]) * self.cache.get(key, pinned=frozenset({key})).run("forward", [x])[0]
                out = y if out is None else out + y
            return out
        out = np.zeros_like(x)
        order = sorted({int(e) for e in experts.ravel()}, key=lambda e: ((layer, e) not in resident, e))
        for e in order:
            key = (layer, e)
            program = self.cache.get(key, pinned=frozenset({key}))
            rows, slots = np.nonzero(experts == e)
            for i in range(0, len(rows), self.expert_chunk):
                r, s = rows[i:i + self.expert_chunk], slots[i:i + self.expert_chunk]
                y = program.run("forward", [np.ascontiguousarray(x[r])])[0]
                out[r] += weights[r, s, None].astype(np.float32) * y
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
        if layer + 1 >= self.n_layers:
            return
        w = self.routers[f"layer_{layer + 1}"]
        guess = np.unique(route(x @ w.T, self.top_k)[0])
        keys = [(layer + 1, int(e)) for e in guess if (layer + 1, int(e)) not in self.cache.resident]
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
        with self.cache.lock:
            for key in list(self.cache.resident):
                self.cache.resident.pop(key).release()
        for program, _ in self.parts.values():
            program.release()

