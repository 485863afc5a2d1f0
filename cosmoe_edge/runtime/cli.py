"""edge-run: generate text from an artifact with experts loaded lazily under a memory budget."""

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import EdgeError, exit_error
from cosmoe_edge.runtime.options import RunOptions
from cosmoe_edge.runtime.policies import DEFAULT

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


fail = partial(exit_error, "edge-run")  # one line on stderr, exit code 2 (or the one given)


@app.command(help="Generate text from an ARTIFACT written by edge-export. Experts are loaded from storage when "
                  "the router first needs them and kept in a cache bounded by --memory-budget; the text streams to "
                  "stdout and the measured figures (time to first token, tokens/s, peak RSS, bytes read, cache "
                  "hits) follow on stderr.")
def main(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder written by edge-export.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate (stops early at end-of-text).")] = 128,
    backend: Annotated[str, typer.Option(help="executorch or onnx.")] = "executorch",
    memory_budget: Annotated[str, typer.Option(help="Bytes of resident experts (and PEER rows): all, 64MB, 1.5GiB, "
                                                    "or 25% of all their bytes.")] = "all",
    cache_policy: Annotated[str, typer.Option(help="Which resident expert to evict: nextuse (the one whose next "
                                                   "use is expected farthest away in the layer cycle), lru, lfu, "
                                                   "or none (keep nothing: every use loads, the naive floor).")]
    = DEFAULT,
    prefetch: Annotated[bool, typer.Option(help="Guess the next layer's experts and load them in the background.")] = False,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: smallest set of tokens with this mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    cold: Annotated[bool, typer.Option(help="Drop the artifact's files from the OS page cache first, so expert "
                                            "loads really read storage.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write the full metrics report here as JSON "
                                                     "(keys: cosmoe_edge/runtime/report.schema.json).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No metrics table.")] = False,
    verify: Annotated[bool, typer.Option(help="Check each file's sha256 on its first load (sizes are always checked).")] = True,
    threads: Annotated[int, typer.Option(help="Threads per program call.")] = 1,
    preload: Annotated[bool, typer.Option(help="Load every expert before the prompt (no lazy loading), for "
                                               "comparison; load_ms includes it.")] = False,
    experts_per_token: Annotated[int | None, typer.Option(help="Experts that run per token, 1..the model's top-k "
                                                               "(default: the model's k_main if it has compressed "
                                                               "experts, else its top-k). The rest of the top-k "
                                                               "stand in as compressed experts when the artifact "
                                                               "has them; else they are dropped and the weights "
                                                               "renormalised.")] = None,
    on_miss: Annotated[str, typer.Option(help="When a selected expert is not resident: wait (load it), compressed "
                                              "(its compressed vector stands in; needs compressed experts) or skip "
                                              "(drop it if its weight is below --skip-below). A token's "
                                              "first-ranked expert always runs.")] = RunOptions.on_miss,
    skip_below: Annotated[float, typer.Option(help="With --on-miss skip: drop a missing expert whose weight is "
                                                   "below this.")] = RunOptions.skip_below,
    cache_bias: Annotated[float, typer.Option(help="Add this to the router logits of resident experts before the "
                                                   "top-k (cache-aware routing; 0: off). Weights stay unbiased.")]
    = RunOptions.cache_bias,
    engine: Annotated[str | None, typer.Option(help="Which decode loop runs: native (the C++ core on ExecuTorch's "
                                                    "runtime or onnxruntime's C API, no torch; the default for "
                                                    "executorch) or python (the reference engine; the default for "
                                                    "onnx, whose int8 weights form only it runs).")] = None,
    packed_cache: Annotated[bool, typer.Option(help="native: map XNNPACK's packed weights from the cache edge-prepare "
                                                    "wrote for this device, instead of packing each expert as it "
                                                    "loads.")] = True,
):
    from cosmoe_edge.runtime.backends import silenced_stderr
    from cosmoe_edge.runtime.run import run

    try:
        options = RunOptions(prompt=prompt, max_new_tokens=max_new_tokens, backend=backend, memory_budget=memory_budget,
                             cache_policy=cache_policy, prefetch=prefetch, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed, cold=cold, verify=verify, threads=threads, preload=preload,
                             experts_per_token=experts_per_token, on_miss=on_miss, skip_below=skip_below,
                             cache_bias=cache_bias, engine=engine, packed_cache=packed_cache)
        note = None
        if options.check().engine != "python" and backend == "executorch" and packed_cache:
            note = packed_cache_note(artifact, options.engine)  # a damaged prepared cache fails here, before the run
        with silenced_stderr():  # the runtimes' C++ log lines; what goes wrong reaches us as an exception
            result = run(artifact, options, stream=sys.stdout)
        if note:
            print(f"edge-run: {note}", file=sys.stderr)
    except EdgeError as e:
        fail(str(e))
    if report is not None:
        report.write_text(json.dumps(result, indent=1))
    if not quiet:
        print_metrics(result)


def packed_cache_note(artifact: Path, engine: str | None) -> str | None:
    """What to say when the native engine runs without a prepared cache (edge-prepare), and why; None with one."""
    from cosmoe_edge.runtime.manifest import load_manifest
    from cosmoe_edge.runtime.native import default_engine
    from cosmoe_edge.runtime.prepare import status

    manifest = load_manifest(artifact)  # a missing or foreign folder is said in the run's own words
    if (engine or default_engine("executorch", manifest)) != "native":
        return None
    path, line = status(artifact)
    return None if path else line


def command(artifact, options: RunOptions, report=None, quiet: bool = True, module: str = "cosmoe_edge.runtime.cli",
            skip: tuple[str, ...] = ()) -> list[str]:
    """The edge-run command line for these options, as `python -m cosmoe_edge.runtime.cli`: how edge-bench
    and the figure scripts start a run in a fresh process (a test parses it back into the same options).
    module, skip: another command taking the same options (edge-eval), and the fields it does not take."""
    argv = [sys.executable, "-m", module, str(artifact)]
    for f in dataclasses.fields(options):
        if f.name in skip:
            continue
        flag, value = "--" + f.name.replace("_", "-"), getattr(options, f.name)
        if value is None:  # the default, resolved against the artifact
            continue
        argv.append((flag if value else "--no-" + flag[2:]) if isinstance(value, bool) else f"{flag}={value}")
    if report is not None:
        argv.append(f"--report={report}")
    if quiet:
        argv.append("--quiet")
    return argv


def print_metrics(r: dict):
    from rich.console import Console
    from rich.table import Table

    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    t = Table(title=f"edge-run: {r['backend']}, {r['quant']}, budget {mb(r['memory_budget_bytes'])} "
                    f"of {mb(r['expert_bytes_total'])} experts" + (" and PEER rows" if r["rows"]["total_bytes"] else ""))
    t.add_column("metric")
    t.add_column("value", justify="right")
    lat = r["token_latency_ms"]
    rows = [
        ("tokens (prompt / generated)", f"{r['prompt_tokens']} / {r['generated_tokens']}"),
        ("time to first token", f"{r['ttft_ms']:.1f} ms"),
        ("prefill", f"{r['prefill_tokens_per_s']:.0f} tok/s"),
        ("decode", f"{r['decode_tokens_per_s']:.0f} tok/s"),
        ("token latency p50 / p95 / max", f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['max']:.2f} ms"),
        ("runtime import (once per process)", f"{r['runtime_import_ms']:.0f} ms"),
        ("load (backbone" + (" + every expert)" if r.get("preloaded") else ")"), f"{r['load_ms']:.0f} ms"),
        ("peak RSS (VmHWM)", mb(r["peak_rss_bytes"])),
        ("RSS after backbone load", mb(r["rss_after_load_bytes"])),
        ("storage read", mb(r["storage_read_bytes"])),
        ("resident experts, peak", mb(r["resident_expert_bytes_peak"])),
        ("expert hits / misses / evictions", f"{r['expert_hits']} / {r['expert_misses']} / {r['expert_evictions']}"),
        ("expert hit rate", f"{r['expert_hit_rate']:.1%}"),
        ("expert switch rate", f"{r['expert_switch_rate']:.1%}"),
    ]
    if r["prefetch"]["issued"]:
        rows.append(("prefetch issued / useful", f"{r['prefetch']['issued']} / {r['prefetch']['useful']}"))
    s = r["selection"]
    rows.append((f"experts per token (on miss: {s['on_miss']})", str(s["experts_per_token"])))
    if s["compressed"] or s["misses_skipped"] or s["bias_changed"]:
        rows.append(("expert runs / compressed / skipped", f"{s['experts_run']} / {s['compressed']} (misses "
                     f"{s['misses_compressed']}) / {s['misses_skipped']}"))
    if s["cache_bias"]:
        rows.append((f"top-k changed by cache bias {s['cache_bias']:g}", str(s["bias_changed"])))
    if (p := r["rows"])["total_bytes"]:
        decode = max(1, r["generated_tokens"] - 1)
        rows += [(f"PEER rows: budget {mb(p['budget_bytes'])} of {mb(p['total_bytes'])}",
                  f"peak {mb(p['resident_bytes_peak'])}"),
                 ("PEER row hits / misses / pages read", f"{p['row_hits']} / {p['row_misses']} / {p['pages_read']}"),
                 ("PEER bytes read (all / per decode token)", f"{mb(p['bytes_read'])} / "
                                                               f"{p['bytes_read_decode'] / decode / 1e3:.1f} KB")]
    for row in rows:
        t.add_row(*row)
    Console(stderr=True).print(t)


if __name__ == "__main__":
    app()
