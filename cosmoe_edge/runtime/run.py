"""One edge-run: load, generate, measure. The report's keys are a contract shared with edge-bench
and the Android demo."""

import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from cosmoe_edge.runtime.backends import import_runtime
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate
from cosmoe_edge.runtime.manifest import ArtifactError, backend_section, check_file, load_manifest
from cosmoe_edge.runtime.metrics import drop_page_cache, peak_rss_bytes, process_id, rss_bytes, storage_read_bytes


class TextStream:
    """Writes decoded text as tokens arrive, holding back an incomplete multi-byte character."""

    def __init__(self, tokenizer: Tokenizer, out):
        self.tokenizer, self.out, self.ids, self.shown = tokenizer, out, [], 0

    def __call__(self, token: int):
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if self.out is not None and not text.endswith("\ufffd"):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)


def artifact_files(artifact: Path, manifest: dict) -> list[Path]:
    files = [artifact / manifest[k]["path"] for k in ("tokenizer", "embedding", "routers")]
    for section in manifest["backends"].values():
        files += [artifact / f["path"] for f in section["backbone"]["files"]]
        files += [artifact / e["path"] for e in section["experts"]]
    return [f for f in files if f.exists()]


def run(artifact, prompt: str, max_new_tokens: int = 128, backend: str = "executorch", memory_budget: str = "all",
        cache_policy: str = "lru", prefetch: bool = False, temperature: float = 0.0, top_k: int = 0,
        top_p: float = 1.0, seed: int = 0, cold: bool = False, verify: bool = True, threads: int = 1,
        stream=None, on_cache_event=None, preload: bool = False) -> dict:
    from cosmoe_edge.runtime.cli import parse_budget

    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    if cold:
        drop_page_cache(artifact_files(artifact, manifest))
    read0 = storage_read_bytes()
    tok_path = check_file(artifact, manifest["tokenizer"], verify)
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception:  # noqa: BLE001  (the tokenizers library raises a bare Exception)
        raise ArtifactError(f"{tok_path.name} is not a valid tokenizer file") from None
    prompt_ids = tokenizer.encode(prompt).ids
    if not prompt_ids:
        raise ArtifactError("the prompt encodes to no tokens")
    if len(prompt_ids) >= manifest["model"]["max_seq_len"]:
        raise ArtifactError(f"the prompt is {len(prompt_ids)} tokens; the model's context is "
                            f"{manifest['model']['max_seq_len']}")

    section = backend_section(manifest, backend)  # a backend the artifact lacks fails before any import
    t = time.perf_counter_ns()
    import_runtime(backend)
    import_ms = (time.perf_counter_ns() - t) / 1e6
    t = time.perf_counter_ns()
    budget = parse_budget(memory_budget, sum(e.get("resident_bytes", e["bytes"]) for e in section["experts"]))
    engine = Engine(artifact, backend, budget, cache_policy, verify, prefetch, threads, on_cache_event=on_cache_event)
    if preload:
        engine.preload()
    load_ms = (time.perf_counter_ns() - t) / 1e6
    rss_after_load = rss_bytes()

    if stream is not None:
        stream.write(prompt)
    text = TextStream(tokenizer, stream)
    misses_at_first = []  # the cache's misses once the prompt is in: what follows is decode's share

    def on_token(token):
        if not misses_at_first:
            misses_at_first.append(engine.cache.misses)
        text(token)

    ids, timings, _ = generate(engine, prompt_ids, max_new_tokens,
                               Sampler(temperature, top_k, top_p, seed), manifest["tokenizer"].get("eos_id"), on_token)
    engine.close()
    if stream is not None:
        stream.write("\n")
        stream.flush()
    c = engine.cache
    lat = np.asarray(timings.token_ns, dtype=np.float64) / 1e6
    decode_s = lat.sum() / 1e3
    return {
        "backend": backend, "quant": manifest["quant"]["scheme"],
        "prompt_tokens": len(prompt_ids), "generated_tokens": len(ids), "text": tokenizer.decode(ids),
        "ttft_ms": timings.ttft_ms,
        "prefill_tokens_per_s": len(prompt_ids) / (timings.prefill_ns / 1e9) if timings.prefill_ns else 0.0,
        "decode_tokens_per_s": len(lat) / decode_s if decode_s else 0.0,
        "token_latency_ms": {"p50": float(np.percentile(lat, 50)) if len(lat) else 0.0,
                             "p95": float(np.percentile(lat, 95)) if len(lat) else 0.0,
                             "max": float(lat.max()) if len(lat) else 0.0},
        "load_ms": load_ms, "runtime_import_ms": import_ms,
        "peak_rss_bytes": peak_rss_bytes(), "rss_after_load_bytes": rss_after_load,
        "storage_read_bytes": storage_read_bytes() - read0,
        "memory_budget_bytes": c.budget, "expert_bytes_total": engine.expert_bytes_total,
        "resident_expert_bytes_peak": c.peak_bytes,
        "expert_hits": c.hits, "expert_misses": c.misses, "expert_evictions": c.evictions,
        "expert_misses_decode": c.misses - (misses_at_first[0] if misses_at_first else c.misses),
        "expert_hit_rate": c.hits / (c.hits + c.misses) if c.hits + c.misses else 0.0,
        "expert_switch_rate": engine.routing.switch_rate,
        "prefetch": {"issued": engine.prefetch_issued, "useful": c.prefetch_useful},
        "expert_load_ms": engine.store.load_ns / 1e6, "expert_loads": engine.store.loads, "process": process_id(),
        "preloaded": preload,
    }
