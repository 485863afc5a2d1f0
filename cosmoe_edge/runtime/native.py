"""The native engine: the decode loop in C++ on ExecuTorch's C++ runtime or onnxruntime's C API
(native/include/cosmoe_edge.h), behind the Python Engine's interface, so that generation, the report and the
benchmarks run either one. This module reads the manifest and hands the core what it names; the core loads the
programs, maps the embedding, routes, keeps the KV cache and the expert cache, and returns logits. No torch is
imported: the core links ExecuTorch's libraries, not its Python bindings (which link libtorch), and opens
onnxruntime's C library, not its Python module."""

import importlib.util
import mmap
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from safetensors.numpy import load_file

from cosmoe_edge.errors import ArtifactError, MissingExtra, RequestError
from cosmoe_edge.runtime.backends import safetensors_layout
from cosmoe_edge.runtime.manifest import backend_section, check_file, expert_cost, load_manifest
from cosmoe_edge.runtime.policies import DEFAULT
from cosmoe_edge.runtime.selection import SelectionCounts, resolve

ENGINES = ("native", "python")


def core():
    """The compiled core, or one line saying why there is none."""
    try:
        from cosmoe_edge.runtime import _native
    except ImportError as e:
        if importlib.util.find_spec("executorch") is None:
            raise MissingExtra("edge-run --backend executorch", "executorch", "executorch") from None
        raise RequestError(f"the native engine is not built in this install ({e}); run `make setup` (it builds the "
                           "core against executorch 1.5.1's C++ SDK), or pass --engine python", "no_native_core") from None
    return _native


def host() -> Path:
    """edge-run-native, the core hosted by a C++ program with no Python in the process (native/tools/): installed
    beside this interpreter's console scripts by the package's build; one line saying why when it is absent."""
    import shutil
    import sysconfig

    path = Path(sysconfig.get_path("scripts")) / "edge-run-native"
    if path.is_file():
        return path
    found = shutil.which("edge-run-native")
    if found is None:
        raise RequestError("edge-run-native is not built in this install; run `make setup` (it needs nlohmann-json3-dev "
                           "besides ExecuTorch's C++ SDK)", "no_native_core")
    return Path(found)


def engine_runs(engine: str, backend: str) -> bool:
    """Whether the benchmarks run `engine` (native, host: the core; python; "": the backend's default) on `backend`:
    the core on ExecuTorch only so far (its ONNX backend does not yet bound onnxruntime's memory as the OS sees it,
    nor run the int8 weights form)."""
    return engine in ("", "python") or backend == "executorch"


def default_engine(backend: str, manifest: dict) -> str:
    """ExecuTorch runs natively by default. ONNX runs on the Python engine by default until the core bounds its
    memory as the OS sees it (onnxruntime's prepacked copies); PEER layers are not in the core yet (the report's
    `engine` says which ran)."""
    return "native" if backend == "executorch" and "peer" not in manifest else "python"


def embedding_layout(path: Path) -> tuple[int, int, bool]:
    """Byte offsets of the embedding file's 'weight' and 'scale' (-1: none), and whether the rows are int8."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            arrays = {name: (dtype, offset) for name, dtype, offset, _, _ in safetensors_layout(buf)}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error) as e:
        raise ArtifactError(f"{path.name} is not a valid safetensors file ({e})", "corrupt_program") from None
    if "weight" not in arrays:
        raise ArtifactError(f"{path.name} has no 'weight'", "corrupt_program")
    dtype, weight = arrays["weight"]
    scale = arrays["scale"][1] if "scale" in arrays else -1
    return weight, scale, dtype == np.int8


class NativeEngine:
    """runtime/engine.py Engine's interface over the native core (expert programs of either backend, no PEER)."""

    def __init__(self, artifact, backend: str = "executorch", *, budget_bytes: int | None = None,
                 policy: str = DEFAULT, verify: bool = True, prefetch: bool = False, threads: int = 1,
                 on_cache_event=None, experts_per_token: int | None = None, on_miss: str = "wait",
                 skip_below: float = 0.5, cache_bias: float = 0.0, packed_cache: Path | None = None,
                 evicted_pages: str = "auto"):
        native = core()
        self.artifact = Path(artifact)
        self.manifest = m = load_manifest(self.artifact)
        self.backend = backend
        section = backend_section(m, backend)
        if "peer" in m:
            raise RequestError("the native engine does not run PEER layers yet; pass --engine python", "unsupported_peer")
        if section.get("expert_form", "program") != "program":
            raise RequestError("the native engine runs expert programs, not the weights form", "bad_option")
        cfg = self.cfg = m["model"]
        spec = m.get("routing", {"kind": "softmax"})
        cmoe = spec["kind"] == "cmoe"
        if cmoe and prefetch:
            raise RequestError("prefetch guesses with a linear router; this model's router is CMoE's (edge-carve)")
        vectors = None
        if "compressed_experts" in m:
            t = load_file(str(check_file(self.artifact, m["compressed_experts"], verify)))
            vectors = np.stack([t[f"layer_{i}"] for i in range(cfg["n_layers"])]).astype(np.float32)
        self.selection = resolve(cfg, vectors is not None, experts_per_token, on_miss, skip_below, cache_bias, cmoe)
        routers = None
        if prefetch:
            r = load_file(str(check_file(self.artifact, m["routers"], verify)))
            routers = np.stack([r[f"layer_{i}"] for i in range(cfg["n_layers"])]).astype(np.float32)
        self.max_seq_len = cfg["max_seq_len"]
        experts = [dict(e, cost=expert_cost(e)) for e in section["experts"]]
        self.expert_bytes_total = sum(e["cost"] for e in experts)
        k_run = self.selection.experts_per_token
        self.min_budget = k_run * max(e["cost"] for e in experts) if experts else 0
        self.budget = self.expert_bytes_total if budget_bytes is None else budget_bytes
        if self.budget < self.min_budget:
            raise RequestError(f"memory budget {self.budget:,} bytes is below the minimum of {self.min_budget:,} "
                               f"bytes (the {k_run} largest experts a layer may need at once)", "budget_too_small")
        emb = m["embedding"]
        weight, scale, int8 = embedding_layout(check_file(self.artifact, emb, False))
        parts = section["backbone"]["parts"]
        files = {f["path"]: f for f in section["backbone"]["files"]}
        config = {k: cfg[k] for k in ("n_layers", "num_experts", "top_k", "dim", "n_heads", "n_kv_heads", "head_dim",
                                      "max_seq_len", "vocab_size", "rope_theta")}
        config |= {"router_renorm": int(cfg.get("router_renorm", True)), "sticky_delta": cfg.get("sticky_delta", 0.0),
                   "layer_max_tokens": m["layer_max_tokens"], "expert_max_tokens": m["expert_max_tokens"]}
        f32 = lambda key: np.ascontiguousarray(spec[key], dtype=np.float32) if cmoe else None  # noqa: E731
        self.model = native.Model(
            str(self.artifact), backend, config, emb, weight, scale, int8,
            [files[parts[f"layer_{i}"]["path"]] for i in range(cfg["n_layers"])], files[parts["head"]["path"]],
            experts, f32("selection_bias"), f32("weight_scale"), vectors, routers, verify, threads,
            str(packed_cache) if packed_cache else "", evicted_pages)
        self.session = native.Session(self.model, self.budget, policy, k_run, self.selection.on_miss,
                                      self.selection.skip_below, self.selection.cache_bias, prefetch,
                                      cfg["vocab_size"])
        if on_cache_event is not None:
            self.session.on_event(lambda kind, layer, expert, b: on_cache_event(kind, (layer, expert), b))
        self.peer = None

    # what run.py and generate() read
    def reset(self):
        self.session.reset()

    def forward(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        return self.session.forward([int(i) for i in ids], all_logits)

    def preload(self):
        self.session.preload()

    def close(self):
        """Release every resident expert and the programs; the figures stay readable."""
        self._final = self.session.stats()
        self.session = self.model = None

    @property
    def _stats(self) -> dict:
        return self._final if self.session is None else self.session.stats()

    @property
    def cache(self):
        s = self._stats
        return SimpleNamespace(hits=s["hits"], misses=s["misses"], evictions=s["evictions"],
                               prefetch_useful=s["prefetch_useful"], peak_bytes=s["resident_bytes_peak"],
                               bytes=s["resident_bytes"])

    @property
    def store(self):
        s = self._stats
        return SimpleNamespace(loads=s["loads"], load_ns=s["load_ns"])

    @property
    def routing(self):
        s = self._stats
        return SimpleNamespace(switch_rate=s["switched"] / s["switch_pairs"] if s["switch_pairs"] else 0.0)

    @property
    def counts(self) -> SelectionCounts:
        s = self._stats
        return SelectionCounts(**{k: s[k] for k in vars(SelectionCounts())})

    @property
    def prefetch_issued(self) -> int:
        return self._stats["prefetch_issued"]
