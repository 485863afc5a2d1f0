"""One edge-run: load, generate, measure, and the report (report.schema.json) that says what happened."""

import time
from pathlib import Path

from tokenizers import Tokenizer

from cosmoe_edge.errors import ArtifactError, EdgeError, RequestError
from cosmoe_edge.runtime.backends import import_runtime
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate
from cosmoe_edge.runtime.manifest import artifact_files, backend_section, check_file, lazy_bytes, load_manifest
from cosmoe_edge.runtime.metrics import drop_page_cache, peak_rss_bytes, process_id, rss_bytes, storage_read_bytes
from cosmoe_edge.runtime.native import NativeEngine, core, default_engine
from cosmoe_edge.runtime.options import RunOptions, parse_budget
from cosmoe_edge.runtime.prepare import prepared_cache
from cosmoe_edge.runtime.report import latency_summary, make_report
from cosmoe_edge.runtime.rows import rows_report
from cosmoe_edge.runtime.selection import report_entry
from cosmoe_edge.runtime.text import TextStream


def open_engine(artifact: Path, manifest: dict, o: RunOptions, on_cache_event=None) -> tuple[Engine, float, float]:
    """The engine `o` asks for, and the milliseconds spent importing the runtime and opening the artifact."""
    section = backend_section(manifest, o.backend)  # a backend the artifact lacks fails before any import
    native = engine_name(o, manifest) == "native"
    t = time.perf_counter_ns()
    if native:
        core()  # the C++ core and ExecuTorch's libraries: no torch
    else:
        import_runtime(o.backend, o.threads)
    import_ms = (time.perf_counter_ns() - t) / 1e6
    t = time.perf_counter_ns()
    budget = parse_budget(o.memory_budget, lazy_bytes(manifest, section))
    kwargs = dict(budget_bytes=budget, policy=o.cache_policy, verify=o.verify, prefetch=o.prefetch, threads=o.threads,
                  on_cache_event=on_cache_event, experts_per_token=o.experts_per_token, on_miss=o.on_miss,
                  skip_below=o.skip_below, cache_bias=o.cache_bias)
    if native:
        packed = prepared_cache(artifact) if o.packed_cache and o.backend == "executorch" else None
        engine = NativeEngine(artifact, o.backend, packed_cache=packed, **kwargs)
    else:
        engine = Engine(artifact, o.backend, **kwargs)
    if o.preload:
        engine.preload()
    return engine, import_ms, (time.perf_counter_ns() - t) / 1e6


def engine_name(o: RunOptions, manifest: dict) -> str:
    return o.engine or default_engine(o.backend, manifest)


def load_tokenizer(artifact: Path, manifest: dict, verify: bool) -> Tokenizer:
    tok_path = check_file(artifact, manifest["tokenizer"], verify)
    try:
        return Tokenizer.from_file(str(tok_path))
    except Exception:  # noqa: BLE001  (the tokenizers library raises a bare Exception)
        raise ArtifactError(f"{tok_path.name} is not a valid tokenizer file", "bad_tokenizer") from None


def cold_files(artifact: Path, manifest: dict, o: RunOptions) -> list[Path]:
    """What --cold drops from the page cache: the artifact's files and the prepared packed cache this run would map."""
    files = artifact_files(artifact, manifest)
    if o.backend == "executorch" and o.packed_cache and o.engine != "python":
        try:
            packed = prepared_cache(artifact)
        except EdgeError:  # no core in this install, or a damaged cache: the run itself says so
            packed = None
        files += [packed] if packed else []
    return files


def run(artifact, options: RunOptions, *, stream=None, on_cache_event=None) -> dict:
    """Generate from `artifact` as `options` ask, streaming text to `stream` (prompt first); returns the
    report. Raises EdgeError subclasses for what a user can cause."""
    o = options.check()
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    if o.cold:
        drop_page_cache(cold_files(artifact, manifest, o))
    read0 = storage_read_bytes()
    tokenizer = load_tokenizer(artifact, manifest, o.verify)
    prompt_ids = tokenizer.encode(o.prompt).ids
    if not prompt_ids:
        raise RequestError("the prompt encodes to no tokens", "empty_prompt")
    if len(prompt_ids) >= manifest["model"]["max_seq_len"]:
        raise RequestError(f"the prompt is {len(prompt_ids)} tokens; the model's context is "
                           f"{manifest['model']['max_seq_len']}", "too_long")

    engine, import_ms, load_ms = open_engine(artifact, manifest, o, on_cache_event)
    rss_after_load = rss_bytes()

    if stream is not None:
        stream.write(o.prompt)
    text = TextStream(tokenizer, stream)
    misses_at_first = []  # the cache's misses once the prompt is in: what follows is decode's share
    rows_read_at_first = []  # the same for the PEER rows' bytes read

    def on_token(token):
        if not misses_at_first:
            misses_at_first.append(engine.cache.misses)
            rows_read_at_first.append(engine.peer.cache.bytes_read if engine.peer else 0)
        text(token)

    try:
        ids, timings, _ = generate(engine, prompt_ids, o.max_new_tokens, Sampler(o.temperature, o.top_k, o.top_p, o.seed),
                                   manifest["tokenizer"].get("eos_id"), on_token)
    finally:
        engine.close()
        if stream is not None:  # the streamed line ends, also when the run failed midway
            stream.write("\n")
            stream.flush()
    c = engine.cache
    decode_s = sum(timings.token_ns) / 1e9
    return make_report(
        backend=o.backend, engine=engine_name(o, manifest), quant=manifest["quant"]["scheme"],
        prompt_tokens=len(prompt_ids), generated_tokens=len(ids), text=tokenizer.decode(ids),
        ttft_ms=timings.ttft_ms,
        prefill_tokens_per_s=len(prompt_ids) / (timings.prefill_ns / 1e9) if timings.prefill_ns else 0.0,
        decode_tokens_per_s=len(timings.token_ns) / decode_s if decode_s else 0.0,
        token_latency_ms=latency_summary(timings.token_ns),
        load_ms=load_ms, runtime_import_ms=import_ms,
        peak_rss_bytes=peak_rss_bytes(), rss_after_load_bytes=rss_after_load,
        storage_read_bytes=storage_read_bytes() - read0,
        memory_budget_bytes=engine.budget, expert_bytes_total=engine.expert_bytes_total,
        resident_expert_bytes_peak=c.peak_bytes + (engine.peer.cache.peak_bytes if engine.peer else 0),
        expert_hits=c.hits, expert_misses=c.misses,
        expert_misses_decode=c.misses - (misses_at_first[0] if misses_at_first else c.misses),
        expert_evictions=c.evictions,
        expert_hit_rate=c.hits / (c.hits + c.misses) if c.hits + c.misses else 0.0,
        expert_switch_rate=engine.routing.switch_rate,
        prefetch={"issued": engine.prefetch_issued, "useful": c.prefetch_useful},
        selection=report_entry(engine.selection, engine.counts),
        rows=rows_report(engine.peer, rows_read_at_first[0] if rows_read_at_first else None),
        expert_load_ms=engine.store.load_ns / 1e6, expert_loads=engine.store.loads,
        preloaded=o.preload, process=process_id(),
    )
