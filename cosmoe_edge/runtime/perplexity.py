"""edge-eval's measurement: perplexity of an artifact as the runtime runs it, teacher-forced one token at a
time (each step a decode step, so the expert cache and every miss policy behave as in generation), with
the speed and misses of that same run."""

import time
from pathlib import Path

import numpy as np

from cosmoe_edge.errors import ArtifactError, RequestError
from cosmoe_edge.runtime.manifest import artifact_files, check_file, load_manifest
from cosmoe_edge.runtime.metrics import drop_page_cache, peak_rss_bytes
from cosmoe_edge.runtime.options import RunOptions
from cosmoe_edge.runtime.run import load_tokenizer, open_engine
from cosmoe_edge.runtime.selection import report_entry


def heldout_text(artifact: Path, manifest: dict, verify: bool) -> str:
    """The held-out text the artifact carries (edge-export copies the model's validation sample)."""
    if "heldout_text" not in manifest:
        raise ArtifactError("this artifact carries no held-out text (exported from a model without one, or by an "
                            "older edge-export): pass --text FILE", "no_heldout")
    return check_file(artifact, manifest["heldout_text"], verify).read_text()


def log_softmax_at(logits: np.ndarray, target: int) -> float:
    z = logits.astype(np.float64)
    m = z.max()
    return float(z[target] - m - np.log(np.exp(z - m).sum()))


def evaluate(artifact, o: RunOptions, text: str | None, window: int = 256, max_tokens: int = 2048,
             progress=None) -> dict:
    """Perplexity of `text` (None: the artifact's held-out text) in windows of `window` tokens, each scored
    from its second token on, until `max_tokens` tokens are scored. `o` gives every runtime choice (its
    prompt and sampling fields are not used). progress(done, total) after each window."""
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    if window < 2 or max_tokens < 1:
        raise RequestError("need --window >= 2 and --tokens >= 1", "bad_option")
    window = min(window, manifest["model"]["max_seq_len"])
    if o.cold:
        drop_page_cache(artifact_files(artifact, manifest))
    text = heldout_text(artifact, manifest, o.verify) if text is None else text
    ids = load_tokenizer(artifact, manifest, o.verify).encode(text).ids
    windows = [ids[i:i + window] for i in range(0, len(ids) - 1, window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise RequestError("the text encodes to fewer than 2 tokens: nothing to score", "empty_text")
    total = min(max_tokens, sum(len(w) - 1 for w in windows))
    engine, _, load_ms = open_engine(artifact, manifest, o)
    nll, scored, t0 = 0.0, 0, time.perf_counter()
    try:
        for w in windows:
            w = w[:max_tokens - scored + 1]
            engine.reset()
            for t in range(len(w) - 1):
                nll -= log_softmax_at(engine.forward([w[t]])[-1], w[t + 1])
            scored += len(w) - 1
            if progress:
                progress(scored, total)
            if scored >= max_tokens:
                break
    finally:
        engine.close()
    seconds = time.perf_counter() - t0
    c = engine.cache
    return {"artifact": str(artifact), "backend": o.backend, "quant": manifest["quant"]["scheme"],
            "perplexity": float(np.exp(nll / scored)), "tokens_scored": scored, "window": window,
            "tokens_per_s": scored / seconds, "seconds": round(seconds, 2), "load_ms": load_ms,
            "memory_budget_bytes": engine.budget, "expert_bytes_total": engine.expert_bytes_total,
            "cache_policy": o.cache_policy, "expert_hits": c.hits, "expert_misses": c.misses,
            "misses_per_token": c.misses / scored, "expert_hit_rate": c.hits / max(1, c.hits + c.misses),
            "expert_switch_rate": engine.routing.switch_rate, "selection": report_entry(engine.selection, engine.counts),
            "peak_rss_bytes": peak_rss_bytes()}
