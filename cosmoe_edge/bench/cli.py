"""edge-bench: run artifacts across budgets, backends and cache policies, each run in a fresh
process, and write results.csv, results.json and PNG plots."""

import csv
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.bench.runs import Config, all_resident, engine_key, matrix, reduce, run_eval, run_once
from cosmoe_edge.errors import exit_error

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
DEFAULT_PROMPTS = ["The list type is"]


fail = partial(exit_error, "edge-bench")  # one line on stderr, exit code 2 (or the one given)


def machine() -> dict:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "python": platform.python_version()}


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def expert_bytes(manifest: dict, backend: str) -> tuple[float, float]:
    """(mean expert file bytes, backbone bytes) of one backend of an artifact."""
    s = manifest["backends"][backend]
    return (statistics.mean(e["bytes"] for e in s["experts"]) if s["experts"] else 0.0,
            sum(f["bytes"] for f in s["backbone"]["files"]))


def add_bounds(rows, manifests, hw):
    """The physical limit per configuration: active bytes per token over memory bandwidth, plus the
    missed experts' bytes over storage bandwidth (cold) or memory bandwidth (page cache, warm)."""
    for r in rows:
        if r["policy"] == "eager" or "decode_tokens_per_s" not in r:
            continue
        m = manifests[r["artifact"]]
        expert, backbone = expert_bytes(m, r["backend"])
        moe_layers = len({e["layer"] for e in m["backends"][r["backend"]]["experts"]})
        peer = m.get("peer")  # a PEER layer's active bytes: heads x top-k rows
        rows = sum(peer["heads"] * peer["top_k"] * e["record_bytes"] for e in peer["layers"].values()) if peer else 0
        active = backbone + moe_layers * m["model"]["top_k"] * expert + rows
        tokens = max(1, r["prompt_tokens"] + r["generated_tokens"])
        missed = (r["expert_misses"] * expert + r.get("rows_bytes_read", 0)) / tokens
        t = active / (hw["memory_gbps"] * 1e9) + missed / ((hw["storage_gbps"] if r["cold"] else hw["memory_gbps"]) * 1e9)
        r["bound_tokens_per_s"] = 1 / t
        r["fraction_of_bound"] = r["decode_tokens_per_s"] / r["bound_tokens_per_s"]


def add_loaded(rows, manifests):
    """KB the runtime loads per decode step, counted where it reads rather than as the OS saw it: each miss's
    expert file (what a device without spare RAM reads again) and the PEER layers' pages."""
    for r in rows:
        if r["policy"] == "eager" or "decode_tokens_per_s" not in r:
            continue
        expert, _ = expert_bytes(manifests[r["artifact"]], r["backend"])
        loaded = r["expert_misses_decode"] * expert + r.get("rows_bytes_read_decode", 0)
        r["loaded_kb_per_token"] = loaded / max(1, r["generated_tokens"] - 1) / 1e3


def add_estimates(rows, manifests, hw, devices):
    """Estimated decode tokens/s per device for each configuration (see bench/device.py), and the same
    formula with this machine's own figures, to check it against what was measured here."""
    from cosmoe_edge.bench.device import Device, estimate_tokens_per_s

    full = {k: r["decode_tokens_per_s"] for k, r in all_resident(rows).items()}
    here = Device("this-machine", hw["storage_gbps"], 0.0, hw["int4_gops"])
    for r in rows:
        if r["policy"] == "eager" or engine_key(r) not in full or "decode_tokens_per_s" not in r:
            continue
        expert, _ = expert_bytes(manifests[r["artifact"]], r["backend"])
        # decode's misses per decode step (the prompt's first loads are time to first token's business)
        misses = r["expert_misses_decode"] / max(1, r["generated_tokens"] - 1)
        load_s = r["expert_load_ms"] / 1e3 / r["expert_loads"] if r.get("expert_loads") else 0.0
        if r["cold"]:
            load_s = max(0.0, load_s - expert / (hw["storage_gbps"] * 1e9))
        r["load_cpu_ms"] = load_s * 1e3
        for dev in [here, *devices]:
            est = estimate_tokens_per_s(dev, hw["int4_gops"], 1 / full[engine_key(r)], misses, expert, load_s)
            r[f"estimate_{dev.name}_tokens_per_s"] = est


@app.command(help="Benchmark ARTIFACTs (from edge-export) across memory budgets, backends and cache policies. "
                  "Each configuration runs edge-run in a fresh process --repeats times; medians (with min/max) go "
                  "to results.csv/results.json and plots in --out. Baselines in the same run: all experts "
                  "resident, no cache (every use loads), and with --model the eager PyTorch fp32 model.")
def main(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifact folders.")],
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets (percent of all experts' bytes, or sizes).")]
    = "100%,50%,25%,12.5%",
    backends: Annotated[str, typer.Option(help="Comma-separated backends.")] = "executorch,onnx",
    engines: Annotated[str, typer.Option(help="Comma-separated edge-run engines, each a dimension of the runs: native "
                                              "(the C++ core; ExecuTorch only, left out of ONNX runs), python, or "
                                              "default (each backend's own: native for executorch). With --peer also "
                                              "host: edge-run-native, the core with no Python in the process.")]
    = "default",
    policies: Annotated[str, typer.Option(help="Comma-separated cache policies that keep experts (nextuse, lru, "
                                               "lfu).")] = "nextuse,lru,lfu",
    prefetch: Annotated[str, typer.Option(help="off, on, or both.")] = "off",
    prompts: Annotated[Path | None, typer.Option(help="File with one prompt per line (default: one built-in).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per run.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (seed 0: the same tokens at every budget); "
                                                    "random-weight models need it, greedy decoding of one repeats "
                                                    "itself and routing stops switching.")] = 0.0,
    repeats: Annotated[int, typer.Option(help="Runs per configuration and prompt.")] = 3,
    cold: Annotated[bool, typer.Option(help="--cold drops the artifact from the page cache before each run.")] = False,
    ram_cap: Annotated[str | None, typer.Option(help="Comma-separated hard RAM caps (e.g. 200MB,300MB): each budget "
                                                     "and policy runs again inside a memory cgroup with that limit, page "
                                                     "cache included (needs root or a delegated cgroup; implies --cold, "
                                                     "since cached pages charged elsewhere escape the cap). A run killed "
                                                     "for memory is recorded as oom.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for results and plots.")] = Path("bench-results"),
    model: Annotated[Path | None, typer.Option(help="model.pt for the eager PyTorch fp32 baseline.")] = None,
    estimate: Annotated[str | None, typer.Option(help="Device profiles to estimate for, comma-separated: "
                                                       "phone-ufs3, phone-ufs4, laptop-nvme, or YAML files.")] = None,
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts per run (edge-run --threads; with "
                                              "--peer, both engines').")] = "1",
    selections: Annotated[str, typer.Option(help="Comma-separated choices of which experts run, each a dimension of the "
                                                 "budget runs: '+'-joined k<N> (--experts-per-token), wait, "
                                                 "compressed or skip (--on-miss), below=<W> (--skip-below), "
                                                 "bias=<D> (--cache-bias); default: the artifact's own. E.g. "
                                                 "default,k1,compressed,skip+below=0.5,bias=1.")] = "default",
    quality_tokens: Annotated[int, typer.Option(help="Also score each budget run's configuration with edge-eval on "
                                                     "this many held-out tokens (0: off): perplexity next to speed, "
                                                     "and the speed-quality frontier plot.")] = 0,
    peer: Annotated[str | None, typer.Option(help="llama.cpp: instead of the budget matrix, run ARTIFACT and llama.cpp "
                                                  "side by side on the same weights (--model: the checkpoint ARTIFACT "
                                                  "was exported from; it is converted to GGUF and quantised). "
                                                  "llama.cpp is built once from the pinned llama-cpp-python sdist "
                                                  "into runs/llamacpp. Full RAM, then each --ram-cap given as P% "
                                                  "(each engine capped at its fixed cost + backbone + P% of its "
                                                  "expert bytes); uses --backends, --threads, --temperature, "
                                                  "--max-new-tokens, --repeats and the first prompt.")] = None,
    footprint_caps: Annotated[str | None, typer.Option(help="With --peer: RAM caps as shares of llama.cpp's own "
                                                            "footprint (its GGUF + its fixed cost, measured at full "
                                                            "RAM), e.g. 60%,40%: the same absolute cap for every "
                                                            "engine; cosmoe-edge's expert budget is what the cap "
                                                            "leaves after its fixed cost and backbone.")] = None,
    peer_timeout: Annotated[float, typer.Option(help="With --peer: seconds after which a run (a thrashing one, under a "
                                                     "cap) is stopped and recorded as a timeout.")] = 300.0,
    peer_quants: Annotated[str, typer.Option(help="With --peer: llama.cpp quantisations (Q4_0, Q8_0).")] = "Q4_0",
    peer_variants: Annotated[str, typer.Option(help="With --peer: llama.cpp's repack (its default: Q4_0 experts "
                                                    "copied to anonymous memory), no-repack (they stay mapped from "
                                                    "the file), no-mmap (-lm none: weights read into memory).")]
    = "repack,no-repack",
):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cosmoe_edge.bench.device import load_profile, memory_bandwidth_gbps, storage_read_gbps
    from cosmoe_edge.errors import ArtifactError, RequestError
    from cosmoe_edge.runtime.manifest import BACKENDS, load_manifest
    from cosmoe_edge.runtime.policies import POLICIES

    manifests = {}
    for a in artifacts:
        try:
            manifests[str(a)] = load_manifest(a)
        except ArtifactError as e:
            fail(str(e))
    backend_list = split_list(backends)
    if not backend_list or any(b not in BACKENDS for b in backend_list):
        fail(f"--backends must name {', '.join(BACKENDS)}")
    policy_list = split_list(policies)
    cached = [p for p in POLICIES if POLICIES[p].keeps]
    if not policy_list or any(p not in cached for p in policy_list):
        fail(f"--policies must name {' and/or '.join(cached)} (no-cache and all-resident baselines are always run)")
    modes = {"off": [False], "on": [True], "both": [False, True]}.get(prefetch)
    if modes is None:
        fail("--prefetch must be off, on or both")
    if repeats < 1 or max_new_tokens < 1:
        fail("--repeats and --max-new-tokens must be at least 1")
    if model is not None and not model.is_file():
        fail(f"model not found: {model}")
    prompt_list = DEFAULT_PROMPTS
    if prompts is not None:
        if not prompts.is_file():
            fail(f"prompts file not found: {prompts}")
        prompt_list = [p for p in prompts.read_text().splitlines() if p.strip()] or fail(f"{prompts} has no prompts")
    try:
        devices = [load_profile(d) for d in split_list(estimate)] if estimate else []
    except ValueError as e:
        fail(str(e))
    try:
        thread_list = [int(t) for t in split_list(threads)]
    except ValueError:
        thread_list = []
    if not thread_list or min(thread_list) < 1:
        fail(f"--threads takes thread counts like 1,2, not {threads!r}")
    engine_list = ["" if e == "default" else e for e in split_list(engines)]
    if not engine_list or any(e not in ("", "native", "python", "host") for e in engine_list):
        fail(f"--engines must name native, python, host and/or default, not {engines!r}")
    if "host" in engine_list and peer is None:
        fail("--engines host runs with --peer llama.cpp only (edge-run-native writes no edge-run report)")
    if peer is not None:
        return side_by_side(artifacts, model, peer, out, backend_list, engine_list, thread_list, split_list(peer_quants),
                            split_list(peer_variants), ram_cap, footprint_caps, prompt_list[0], max_new_tokens,
                            temperature, repeats, peer_timeout)
    from cosmoe_edge.bench.runs import parse_selection

    selection_list = ["" if p == "default" else p for p in split_list(selections)] or [""]
    try:
        for spec in selection_list:
            parse_selection(spec)
    except ValueError as e:
        fail(str(e))
    if quality_tokens < 0:
        fail("--quality-tokens must be >= 0")
    caps = [None]
    if ram_cap:
        from cosmoe_edge.bench.ramcap import unavailable
        from cosmoe_edge.runtime.options import parse_budget

        try:
            caps += [parse_budget(c, 0) for c in split_list(ram_cap)]
        except RequestError:
            fail(f"cannot read --ram-cap {ram_cap!r}: use sizes like 200MB,1.5GiB")
        if None in caps[1:] or 0 in caps[1:]:
            fail("--ram-cap takes sizes like 200MB, not percentages or all")
        if why := unavailable():
            fail(why)
        cold = True
    out.mkdir(parents=True, exist_ok=True)

    configs = matrix([str(a) for a in artifacts], backend_list, split_list(budgets), policy_list, modes, cold, caps,
                     thread_list, selection_list, engine_list)
    if model is not None:
        configs.append(Config(str(model), "eager", "all", "eager", False, False))
    hw = machine() | {"temperature": temperature}
    console = Console(stderr=True)
    console.print(f"measuring this machine ({hw['cpu']}, {hw['cores']} cores) ...")
    hw["memory_gbps"] = memory_bandwidth_gbps()
    hw["storage_gbps"] = storage_read_gbps(directory=str(out))
    if devices:
        from cosmoe_edge.bench.device import int4_gops

        hw["int4_gops"] = int4_gops()
    rows = []
    quality = [c for c in configs if quality_tokens and c.policy != "eager" and c.policy != "none"]
    total = len(configs) * len(prompt_list) * repeats + len(quality)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("benchmark", total=total)
        for c in configs:
            bar.update(task, description=f"{c.label} @ {c.budget}")
            reports = []
            for p in prompt_list:
                for _ in range(repeats):
                    reports.append(run_once(c, p, max_new_tokens, str(model) if model else None, temperature))
                    bar.advance(task)
            rows.append(reduce(c, reports))
            if c in quality:
                bar.update(task, description=f"{c.label} @ {c.budget}: edge-eval")
                rows[-1] |= run_eval(c, quality_tokens)
                bar.advance(task)
    add_bounds(rows, manifests, hw)
    add_loaded(rows, manifests)
    if devices:
        add_estimates(rows, manifests, hw, devices)
    write_results(rows, hw, out, devices)
    from cosmoe_edge.bench.plots import draw

    plots = draw(rows, out, f"{hw['cpu']}, {hw['cores']} cores", hw["date"])
    print_summary(rows, hw, devices)
    print(f"wrote {out}/results.csv, results.json and {len(plots)} plots")


def side_by_side(artifacts, model, peer, out, backends, engines, threads, quants, variants, ram_cap, footprint_caps,
                 prompt, tokens, temperature, repeats, timeout_s):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cosmoe_edge.bench import side_by_side as sbs
    from cosmoe_edge.bench.llamacpp import CACHE, QUANTS
    from cosmoe_edge.errors import EdgeError, MissingExtra, require
    from cosmoe_edge.runtime.manifest import load_manifest

    if peer != "llama.cpp":
        fail(f"--peer {peer!r}: the one peer engine is llama.cpp")
    try:  # the checkpoint goes to GGUF as edge-convert writes it
        require("edge-bench --peer", "hf", "torch", "safetensors", "gguf")
    except MissingExtra as e:
        fail(str(e))
    if len(artifacts) != 1 or model is None:
        fail("--peer compares one ARTIFACT with llama.cpp on the same weights: pass one artifact and --model, the "
             "checkpoint it was exported from")
    manifest = load_manifest(artifacts[0])
    source = manifest["source"]["checkpoint"]
    if Path(source).name != model.name:
        fail(f"{artifacts[0]} was exported from {source}, not {model.name}: the comparison needs the same weights")
    if not quants or any(q not in QUANTS for q in quants):
        fail(f"--peer-quants must name {', '.join(QUANTS)}")
    if not variants or any(v not in ("repack", "no-repack", "no-mmap") for v in variants):
        fail("--peer-variants must name repack, no-repack and/or no-mmap")
    def shares(text, what):
        out = []
        for c in split_list(text or ""):
            try:
                pct = float(c.removesuffix("%")) if c.endswith("%") else -1.0
            except ValueError:
                pct = -1.0
            if not 0 < pct <= 100:
                fail(f"with --peer, {what}, not {c!r}")
            out.append(pct)
        return out

    caps = shares(ram_cap, "--ram-cap takes shares of the expert bytes like 100%,50%,25%")
    footprints = shares(footprint_caps, "--footprint-caps takes shares of llama.cpp's footprint like 60%,40%")
    if caps or footprints:
        from cosmoe_edge.bench.ramcap import unavailable

        if why := unavailable():
            fail(why)
    paths = sbs.cosmoe_paths(backends, engines, manifest)
    if not paths:
        fail("--engines native runs --backends executorch only")
    hw = machine() | {"temperature": temperature, "prompt": prompt, "max_new_tokens": tokens}
    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("side by side", total=sbs.total_runs(paths, threads, quants, variants, caps, repeats, footprints))
        try:
            result = sbs.compare(artifacts[0], model, CACHE / "gguf", paths=paths, threads=threads, quants=quants,
                                 caps_pct=caps, footprint_pcts=footprints, prompt=prompt, tokens=tokens, temperature=temperature,
                                 repeats=repeats, variants=variants,
                                 progress=lambda d, n=0: bar.update(task, description=d, advance=n),
                                 log=console.print, timeout_s=timeout_s)
        except (EdgeError, RuntimeError) as e:
            fail(str(e))
    result["machine"] = hw
    (out / "side_by_side.json").write_text(json.dumps(result, indent=1))
    write_csv(result["rows"], out / "side_by_side.csv")
    sbs.plot(result["rows"], out / "side_by_side.png", sbs.plot_title(Path(artifacts[0]).name, result))
    print_side_by_side(result)
    print(f"wrote {out}/side_by_side.json, side_by_side.csv and side_by_side.png")


def print_side_by_side(result):
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"cosmoe-edge and {result['version']}, same weights")
    for c in ["engine / variant", "threads", "RAM cap", "decode tok/s [min-max]", "prefill tok/s", "ttft ms",
              "peak RSS MB", "cgroup peak MB", "read MB", "status"]:
        t.add_column(c, justify="left" if c == "engine / variant" else "right")
    for r in result["rows"]:
        cap = "full" if r["cap_pct"] is None else f"+{r['cap_pct']:g}% = {r['ram_cap'] / 1e6:.0f} MB"
        mb = lambda k, r=r: f"{r[k] / 1e6:.0f}" if k in r else ""  # noqa: E731
        dec = (f"{r['decode_tokens_per_s']:.1f} [{r['decode_tokens_per_s_min']:.1f}-{r['decode_tokens_per_s_max']:.1f}]"
               if "decode_tokens_per_s" in r else "")
        t.add_row(r["label"], str(r["threads"]), cap, dec, f"{r['prefill_tokens_per_s']:.0f}" if dec else "",
                  f"{r['ttft_ms']:.1f}" if dec else "", mb("peak_rss_bytes"), mb("cgroup_peak_bytes"),
                  mb("storage_read_bytes"), r["status"])
    Console(width=max(160, Console().width)).print(t)
    for b in result["llama_bench"]:
        if "error" not in b:
            print(f"llama-bench {b['test']} t{b['threads']} repack={int(b['repack'])}: {b['tokens_per_s']:.1f} tok/s")


def write_csv(rows, path: Path):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("text", "processes")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_results(rows, hw, out: Path, devices):
    (out / "results.json").write_text(json.dumps({"machine": hw, "devices": [d.to_dict() for d in devices],
                                                  "estimates_are_estimates": bool(devices), "rows": rows}, indent=1))
    write_csv(rows, out / "results.csv")


def print_summary(rows, hw, devices):
    from rich.console import Console
    from rich.table import Table

    cold = " (cold: page cache dropped before each run)" if any(r.get("cold") for r in rows) else ""
    t = Table(title=f"edge-bench on {hw['cpu']} ({hw['cores']} cores), memory {hw['memory_gbps']:.1f} GB/s, "
                    f"storage {hw['storage_gbps']:.2f} GB/s (O_DIRECT){cold}")
    cols = ["configuration", "budget", "decode tok/s", "of bound", "ttft ms", "hit rate", "switch rate", "peak RSS MB",
            "read KB/tok", "loaded KB/tok"]
    quality = any("perplexity" in r for r in rows)
    if quality:
        cols += ["perplexity"]
    if devices:
        cols += ["formula here tok/s"] + [f"ESTIMATE {d.name} tok/s" for d in devices]
    for c in cols:
        t.add_column(c, justify="left" if c == "configuration" else "right")
    for r in rows:
        if "decode_tokens_per_s" not in r:
            t.add_row(r["label"], r["budget"], r.get("status", "failed"), "", f"{r.get('error', '?')[:70]}",
                      *[""] * (len(cols) - 5))
            continue
        cells = [r["label"], r["budget"],
                 f"{r['decode_tokens_per_s']:.0f} [{r['decode_tokens_per_s_min']:.0f}-{r['decode_tokens_per_s_max']:.0f}]",
                 f"{r['fraction_of_bound']:.0%}" if "fraction_of_bound" in r else "",
                 f"{r['ttft_ms']:.1f}", f"{r['expert_hit_rate']:.1%}", f"{r['expert_switch_rate']:.2f}",
                 f"{r['peak_rss_bytes'] / 1e6:.0f}",
                 f"{r['storage_read_bytes'] / max(1, r['generated_tokens']) / 1e3:.1f}",
                 f"{r['loaded_kb_per_token']:.1f}" if "loaded_kb_per_token" in r else ""]
        if quality:
            cells.append(f"{r['perplexity']:.3f}" if "perplexity" in r else r.get("eval_error", "")[:40])
        if devices:
            cells += [f"{r[k]:.0f}" if (k := f"estimate_{d}_tokens_per_s") in r else ""
                      for d in ["this-machine"] + [d.name for d in devices]]
        t.add_row(*cells)
    Console(width=max(200, Console().width)).print(t)


if __name__ == "__main__":
    app()
