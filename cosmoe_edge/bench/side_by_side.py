"""cosmoe-edge and llama.cpp on the same weights (edge-bench --peer llama.cpp): the checkpoint an
artifact was exported from goes to GGUF (edge-convert) and through llama-quantize; then both engines
generate the same number of tokens after the same prompt, each run a fresh process started cold (its
files dropped from the page cache), at full RAM and inside memory cgroups sized for each engine as

    cap = fixed cost + backbone bytes + P% of the expert bytes

An engine's fixed cost is what it holds besides one copy of its weights: the least, over its full-RAM
runs, of peak RSS minus the bytes of its weight files (runtime, KV cache, buffers; measured in the same
run). A variant that keeps a second copy of the weights (llama.cpp's Q4_0 repack, cosmoe-edge's
preloaded experts promoted into sessions) is not given room for it. Variants: cosmoe-edge "preload"
(every expert loaded before the prompt, as llama.cpp's warmup touches every weight; full RAM only) and
"lazy" (experts loaded on first use, with a P% expert budget under a cap); llama.cpp "repack" (its
default), "no-repack" (experts stay mapped from the file) and "no-mmap" (-lm none: weights read into
memory). Because the engines' fixed costs differ (a Python process against a C++ one), llama.cpp also
runs at the cap of the cosmoe-edge backend with the least fixed cost: the same RAM for both.
llama-bench's prefill/decode figures go beside them."""

import json
import statistics
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from cosmoe_edge.bench import llamacpp
from cosmoe_edge.bench.runs import Config, measured, run_once
from cosmoe_edge.runtime.metrics import drop_page_cache, run_measured

FOOTPRINT = "llama.cpp's footprint"  # Run.cap_of of the caps that are a share of llama.cpp's own RAM
TIMEOUT_S = 300  # a thrashing run is recorded as a timeout, not waited for
FIGURES = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "peak_rss_bytes", "storage_read_bytes",
           "cgroup_peak_bytes", "generated_tokens", "resident_expert_bytes_peak")


@dataclass(frozen=True)
class Run:
    """One configuration of either engine."""

    engine: str  # cosmoe-edge | llama.cpp
    backend: str  # executorch | onnx | llama.cpp
    quant: str  # int4 / int8 (the artifact's) | Q4_0 / Q8_0
    threads: int
    variant: str  # cosmoe-edge: preload | lazy; llama.cpp: repack (its default) | no-repack | no-mmap
    cap_pct: float | None = None  # None: full RAM; P: fixed + backbone + P% of the experts
    ram_cap: int | None = None  # bytes
    cap_of: str = ""  # "": this engine's own cap; else the cosmoe-edge backend[/runtime] whose cap (same RAM) it runs at
    runtime: str = ""  # cosmoe-edge: native (the C++ core in edge-run), python, or host (edge-run-native: no Python)
    budget: str = ""  # cosmoe-edge's expert budget under a cap; "": cap_pct% of its experts

    @property
    def expert_budget(self) -> str:
        return self.budget or ("all" if self.cap_pct is None else f"{self.cap_pct:g}%")

    @property
    def path(self) -> str:
        return path_of(self.backend, self.runtime)

    @property
    def label(self) -> str:
        backend = f"{self.path} " if self.engine == "cosmoe-edge" else ""
        where = (f" at {self.cap_pct:g}% of {self.cap_of}" if self.cap_of == FOOTPRINT
                 else f" at {self.cap_of}'s cap" if self.cap_of else "")
        return f"{self.engine} {backend}{self.variant} {self.quant} t{self.threads}{where}"


def path_of(backend: str, runtime: str) -> str:
    """A cosmoe-edge backend and its runtime, executorch/native (a row's or a Run's); llama.cpp's backend alone."""
    return backend + (f"/{runtime}" if runtime else "")


def cosmoe_paths(backends: list[str], engines: list[str], manifest: dict) -> list[tuple[str, str]]:
    """(backend, runtime) pairs that run: engines "" is each backend's default; the native core (native, host) runs
    ExecuTorch only, so it is left out of the ONNX backend."""
    from cosmoe_edge.runtime.native import default_engine, engine_runs

    pairs = [(b, e or default_engine(b, manifest)) for b in backends for e in engines]
    return list(dict.fromkeys((b, e) for b, e in pairs if engine_runs(e, b)))


def gguf_sizes(path: Path) -> tuple[int, int]:
    """(backbone bytes, expert bytes) of a GGUF: the experts are the stacked *_exps tensors. The token embedding
    is left out, as artifact_sizes leaves ours: both engines map it and page in the rows the tokens use, so a run
    does not hold it and it is no weight its fixed cost should be measured against."""
    import gguf

    tensors = gguf.GGUFReader(path).tensors
    experts = sum(int(t.n_bytes) for t in tensors if "_exps" in t.name)
    embedding = sum(int(t.n_bytes) for t in tensors if t.name == "token_embd.weight")
    return path.stat().st_size - experts - embedding, experts


def artifact_sizes(manifest: dict, backend: str) -> tuple[int, int]:
    """(backbone bytes, expert bytes) of one backend of an artifact (shared files in the backbone, but the
    embedding table: mapped, its rows paged in as tokens need them, as gguf_sizes leaves llama.cpp's out)."""
    s = manifest["backends"][backend]
    shared = sum(manifest[k]["bytes"] for k in ("routers", "tokenizer") if k in manifest)
    return (sum(f["bytes"] for f in s["backbone"]["files"]) + shared, sum(e["bytes"] for e in s["experts"]))


def run_llamacpp(bindir: Path, gguf: Path, run: Run, prompt: str, tokens: int, temperature: float,
                 attempts: int = 3, timeout: float = TIMEOUT_S) -> dict:
    """One measured llama-completion run. Its timings are printed by an asynchronous logger that can lose
    its last lines at exit (llama.cpp issue 22142): a run that ended well without them is run again."""
    cmd = llamacpp.completion_command(bindir, gguf, prompt, tokens, run.threads, temperature,
                                      repack=run.variant != "no-repack", mmap=run.variant != "no-mmap")
    for attempt in range(attempts):
        drop_page_cache([gguf])
        m, figures = measured(cmd, run.ram_cap, timeout)
        if "error" in figures:
            return figures
        try:
            r = llamacpp.parse_timings(m.stderr)
        except ValueError as e:
            if attempt + 1 < attempts:
                continue
            return {"error": str(e)}
        return r | figures | {"log_lost_runs": attempt}


def run_host(artifact: Path, run: Run, prompt: str, tokens: int, temperature: float, timeout: float = TIMEOUT_S) -> dict:
    """One measured edge-run-native run (the core with no Python in the process), cold as edge-run --cold is: the
    prompt is tokenized here, the process's peak RSS and reads measured as llama.cpp's are."""
    from tokenizers import Tokenizer

    from cosmoe_edge.runtime.manifest import artifact_files, load_manifest
    from cosmoe_edge.runtime.native import host
    from cosmoe_edge.runtime.prepare import prepared_cache

    manifest = load_manifest(artifact)
    ids = Tokenizer.from_file(str(artifact / manifest["tokenizer"]["path"])).encode(prompt).ids
    budget = run.expert_budget
    cmd = [str(host()), str(artifact), "--ids", ",".join(map(str, ids)), "--max-new-tokens", str(tokens),
           "--memory-budget", budget, "--threads", str(run.threads), "--temperature", str(temperature)]
    cmd += ["--preload"] if run.variant == "preload" else []
    if (packed := prepared_cache(artifact)) is not None:
        cmd += ["--packed-cache", str(packed)]
    drop_page_cache(artifact_files(artifact, manifest) + ([packed] if packed else []))  # cold, as edge-run --cold
    m, figures = measured(cmd, run.ram_cap, timeout)
    if "error" in figures:
        return figures
    r = json.loads(m.stdout)
    return {k: r[k] for k in FIGURES if k in r} | figures  # the OS's peak RSS and reads, as llama.cpp's


def run_cosmoe(artifact: Path, run: Run, prompt: str, tokens: int, temperature: float, timeout: float = TIMEOUT_S) -> dict:
    from cosmoe_edge.runtime.policies import DEFAULT

    if run.runtime == "host":
        return run_host(artifact, run, prompt, tokens, temperature, timeout)
    budget = run.expert_budget
    c = Config(str(artifact), run.backend, budget, DEFAULT, False, True, run.ram_cap, run.threads,
               preload=run.variant == "preload", engine=run.runtime)
    r = run_once(c, prompt, tokens, None, temperature, timeout)
    return r if "error" in r else {k: r[k] for k in FIGURES if k in r}


def reduce(run: Run, reports: list[dict], sizes: tuple[int, int], version: str) -> dict:
    ok = [r for r in reports if "error" not in r]
    errors = [r["error"] for r in reports if "error" in r]
    row = asdict(run) | {"label": run.label, "version": version, "runs": len(reports),
                         "backbone_bytes": sizes[0], "expert_bytes": sizes[1],
                         "oom_runs": sum(1 for r in reports if r.get("oom")),
                         "timeout_runs": sum(1 for r in reports if r.get("timeout")),
                         "log_lost_runs": sum(r.get("log_lost_runs", 0) for r in reports)}
    row["status"] = "oom" if row["oom_runs"] else "timeout" if row["timeout_runs"] else "failed" if errors else "ok"
    if errors:
        row["error"] = errors[0]
    for k in FIGURES:
        vals = [r[k] for r in ok if r.get(k) is not None]
        if vals:
            row[k] = statistics.median(vals)
            row[k + "_min"], row[k + "_max"] = min(vals), max(vals)
    return row


def compare(artifact: Path, model: Path, work: Path, *, paths: list[tuple[str, str]], threads: list[int],
            quants: list[str], caps_pct: list[float], footprint_pcts: list[float] = (), prompt: str, tokens: int,
            temperature: float, repeats: int, variants: list[str], progress=lambda desc, n=0: None, log=print,
            timeout_s: float = TIMEOUT_S) -> dict:
    """Every configuration, full RAM first (it sizes the caps). Returns {"rows", "llama_bench", "version"}."""
    from cosmoe_edge.export.mixtral import to_gguf
    from cosmoe_edge.runtime.manifest import load_manifest

    manifest = load_manifest(artifact)
    bindir = llamacpp.build(log=log)
    version = llamacpp.engine_version(bindir)
    work.mkdir(parents=True, exist_ok=True)
    f32 = work / f"{model.stem}-f32.gguf"
    ggufs = {q: llamacpp.quantized_path(f32, q) for q in quants}
    stale = [q for q, p in ggufs.items() if not p.is_file() or p.stat().st_mtime < model.stat().st_mtime]
    if stale:  # the quantised files are kept and reused; the f32 one (4x their size) only while they are made
        log(f"converting {model} to {f32}")
        try:  # llama.cpp routes each token on its own: a sticky top-k model runs there without its rule
            to_gguf(model, f32, plain_top_k=True)
            for q in stale:
                llamacpp.quantize(bindir, f32, q)
        finally:
            f32.unlink(missing_ok=True)
    ours = manifest["exporter"]["cosmoe-edge"]
    full = [Run("cosmoe-edge", b, manifest["quant"]["scheme"], t, v, runtime=e) for b, e in paths
            for v in ("preload", "lazy") for t in threads]
    full += [Run("llama.cpp", "llama.cpp", q, t, v) for q in quants for v in variants for t in threads]
    sizes = {r: (artifact_sizes(manifest, r.backend) if r.engine == "cosmoe-edge" else gguf_sizes(ggufs[r.quant]))
             for r in full}

    def measure(run: Run, base: Run) -> dict:
        reports = []
        for _ in range(repeats):
            progress(f"{run.label} {'full RAM' if run.cap_pct is None else f'cap {run.ram_cap / 1e6:.0f} MB'}", 1)
            if run.engine == "cosmoe-edge":
                reports.append(run_cosmoe(artifact, run, prompt, tokens, temperature, timeout_s))
            else:
                reports.append(run_llamacpp(bindir, ggufs[run.quant], run, prompt, tokens, temperature,
                                            timeout=timeout_s))
        return reduce(run, reports, sizes[base], ours if run.engine == "cosmoe-edge" else version)

    rows = [measure(r, r) for r in full]
    for run, row in capped_runs(full, rows, sizes, caps_pct, footprint_pcts):
        rows.append(measure(run, row["base"]) | {k: row[k] for k in ("fixed_bytes", "footprint_bytes") if k in row})
    progress("llama-bench", 0)
    bench = []
    for v in variants:
        if v == "no-mmap":
            continue
        m = run_measured(llamacpp.bench_command(bindir, ggufs[quants[0]], threads, 32, tokens, repeats,
                                                repack=v != "no-repack"), timeout=30 * TIMEOUT_S)
        bench += llamacpp.parse_bench(m.stdout) if m.returncode == 0 else [{"error": m.stderr[-300:]}]
    return {"rows": rows, "llama_bench": bench, "version": version, "ggufs": {q: str(p) for q, p in ggufs.items()}}


def capped_runs(full: list[Run], rows: list[dict], sizes: dict, caps_pct: list[float],
                footprint_pcts=()) -> list[tuple[Run, dict]]:
    """Sets each full-RAM row's fixed_bytes (the least peak RSS minus the weight bytes it holds over the full-RAM
    runs of the same engine, backend, runtime and quant: a lazy run of ours holds the experts it loaded) and
    returns the capped runs, each with {base, fixed_bytes}:
    every run but the preloaded ones at its own cap, and llama.cpp's again at the cap of the cosmoe-edge
    backend with the least fixed cost (the same RAM for both engines). footprint_pcts: caps of P% of llama.cpp's
    footprint (its first quant's GGUF + its fixed cost), the same absolute cap for every run; a cosmoe-edge run's
    expert budget is what the cap leaves after its fixed cost and backbone (a model larger than the RAM)."""
    def held(x, b):  # the weight bytes a run holds: a lazy run of ours only the experts it loaded
        return sizes[b][0] + x.get("resident_expert_bytes_peak", sizes[b][1])

    for base, row in zip(full, rows, strict=True):
        same = [x["peak_rss_bytes"] - held(x, b) for x, b in zip(rows, full, strict=True)
                if "peak_rss_bytes" in x
                and (b.engine, b.backend, b.runtime, b.quant) == (base.engine, base.backend, base.runtime, base.quant)]
        row["fixed_bytes"] = max(0, min(same)) if same else None

    def cap(base, row, pct):
        backbone, experts = sizes[base]
        return int(row["fixed_bytes"] + backbone + pct / 100 * experts)

    ours = [(b, r) for b, r in zip(full, rows, strict=True) if b.engine == "cosmoe-edge" and r["fixed_bytes"] is not None]
    lightest = min(ours, key=lambda br: br[1]["fixed_bytes"], default=None)
    out = []
    for pct in caps_pct:
        for base, row in zip(full, rows, strict=True):
            if row["fixed_bytes"] is None or base.variant == "preload":
                continue
            extra = {"base": base, "fixed_bytes": row["fixed_bytes"]}
            out.append((Run(base.engine, base.backend, base.quant, base.threads, base.variant, pct,
                            cap(base, row, pct), runtime=base.runtime), extra))
            if base.engine == "llama.cpp" and lightest:
                out.append((Run(base.engine, base.backend, base.quant, base.threads, base.variant, pct,
                                cap(*lightest, pct), lightest[0].path), extra))
    theirs = [(b, r) for b, r in zip(full, rows, strict=True) if b.engine == "llama.cpp" and r["fixed_bytes"] is not None]
    if footprint_pcts and theirs:
        q = theirs[0][0].quant
        footprint = min(sum(sizes[b]) + r["fixed_bytes"] for b, r in theirs if b.quant == q)
        for pct in footprint_pcts:
            ram = int(pct / 100 * footprint)
            for base, row in zip(full, rows, strict=True):
                if row["fixed_bytes"] is None or base.variant == "preload":
                    continue
                budget = ""
                if base.engine == "cosmoe-edge":  # what the cap leaves for experts (at least 1: refused in one line)
                    budget = str(int(max(1, ram - row["fixed_bytes"] - sizes[base][0])))
                out.append((Run(base.engine, base.backend, base.quant, base.threads, base.variant, pct, ram, FOOTPRINT,
                                base.runtime, budget), {"base": base, "fixed_bytes": row["fixed_bytes"],
                                                        "footprint_bytes": footprint}))
    return out


def total_runs(paths, threads, quants, variants, caps_pct, repeats, footprint_pcts=()) -> int:
    ours, theirs = len(paths) * len(threads), len(quants) * len(variants) * len(threads)
    return (2 * ours + theirs + (ours + 2 * theirs) * len(caps_pct) + (ours + theirs) * len(footprint_pcts)) * repeats


def plot_title(name: str, result: dict) -> str:
    hw = result["machine"]
    return f"{name}: cosmoe-edge vs {result['version'].split(',')[0]}\n{hw['cpu']}, {hw['cores']} cores, {hw['date']}"


COLORS = {("cosmoe-edge", "executorch/native", "preload"): "tab:purple",
          ("cosmoe-edge", "executorch/native", "lazy"): "tab:pink",
          ("cosmoe-edge", "executorch/host", "preload"): "black", ("cosmoe-edge", "executorch/host", "lazy"): "tab:gray",
          ("cosmoe-edge", "executorch/python", "preload"): "tab:blue", ("cosmoe-edge", "executorch/python", "lazy"): "tab:cyan",
          ("cosmoe-edge", "onnx/python", "preload"): "tab:green", ("cosmoe-edge", "onnx/python", "lazy"): "tab:olive",
          ("llama.cpp", "llama.cpp", "repack"): "tab:red", ("llama.cpp", "llama.cpp", "no-repack"): "tab:orange",
          ("llama.cpp", "llama.cpp", "no-mmap"): "tab:brown"}


def plot(rows: list[dict], path: Path, title: str):
    """Decode tok/s against the RAM cap (full RAM at the left): one line per engine/backend/variant
    (colour) and thread count (solid: 1 thread, dashed: more); llama.cpp at cosmoe-edge's cap (the same RAM)
    pale, with triangles; a killed or timed-out run is drawn at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def at(r):  # an x position: full RAM, then the per-engine caps, then the shares of llama.cpp's footprint
        return None if r["cap_pct"] is None else (r.get("cap_of") == FOOTPRINT, -r["cap_pct"])

    def series(r):  # a footprint cap is one more point of the run's own line (the same cap for all): its full-RAM label
        if r.get("cap_of") != FOOTPRINT:
            return r["label"]
        run = Run(**{f.name: r[f.name] for f in fields(Run) if f.name in r})
        return replace(run, cap_pct=None, ram_cap=None, cap_of="", budget="").label

    xs = sorted({at(r) for r in rows if r["cap_pct"] is not None})
    pos = {None: 0} | {x: i + 1 for i, x in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for label in dict.fromkeys(series(r) for r in rows):
        mine = [r for r in rows if series(r) == label]
        pts = sorted((pos[at(r)], r.get("decode_tokens_per_s", 0.0)) for r in mine)
        r = mine[0]
        same_ram = r.get("cap_of") and r.get("cap_of") != FOOTPRINT
        ax.plot([p for p, _ in pts], [v for _, v in pts], "-" if r["threads"] == 1 else "--",
                marker="o" if r["engine"] == "cosmoe-edge" else "^" if same_ram else "s",
                alpha=0.45 if same_ram else 1.0,
                color=COLORS.get((r["engine"], path_of(r["backend"], r.get("runtime", "")), r["variant"]), "gray"),
                label=label)
    ax.set_xticks(range(len(xs) + 1), ["full RAM"] + [f"{-p:g}% of llama.cpp" if fp else f"+{-p:g}%" for fp, p in xs])
    ax.set_xlabel("RAM cap. +P%: each engine's fixed cost + backbone + P% of its experts;\n"
                  "P% of llama.cpp: of its GGUF + fixed cost, one cap for all", fontsize=7)
    if any(r.get("cap_of") == FOOTPRINT for r in rows):  # tens of tok/s at full RAM, a few under these caps
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
    ax.set_ylabel("decode tokens/s (median; 0: killed or timed out)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
