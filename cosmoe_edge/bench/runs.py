"""Run benchmark configurations, each in a fresh process (peak RSS is per process), and reduce
repeats to medians with min and max."""

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cosmoe_edge.bench.ramcap import RamCap, killed_for_memory
from cosmoe_edge.runtime import report as report_schema
from cosmoe_edge.runtime.cli import command
from cosmoe_edge.runtime.metrics import run_measured
from cosmoe_edge.runtime.native import engine_runs
from cosmoe_edge.runtime.options import RunOptions


@dataclass(frozen=True)
class Config:
    artifact: str
    backend: str
    budget: str  # as given to edge-run: all, 50%, 64MB
    policy: str  # lru, lfu, none (no cache), or "eager" for the PyTorch baseline
    prefetch: bool
    cold: bool
    ram_cap: int | None = None  # bytes: the run's memory cgroup limit (bench/ramcap.py); None: uncapped
    threads: int = 1
    preload: bool = False  # every expert loaded before the prompt (as llama.cpp's warmup does)
    selection: str = ""  # which experts run (parse_selection); "": the artifact's defaults
    engine: str = ""  # edge-run --engine: native or python; "": the backend's default (native for executorch)

    @property
    def label(self) -> str:
        if self.policy == "eager":
            return "eager fp32 (PyTorch)"
        return (f"{Path(self.artifact).name}/{self.backend}" + (f":{self.engine}" if self.engine else "")
                + f"/{self.policy}" + ("+prefetch" if self.prefetch else "")
                + (f" cap {self.ram_cap / 2**20:.0f}MiB" if self.ram_cap else "")
                + (f" t{self.threads}" if self.threads != 1 else "") + (" preload" if self.preload else "")
                + (f" [{self.selection}]" if self.selection else ""))

    def run_options(self, **kw) -> RunOptions:
        """The edge-run options of this configuration (kw: the prompt and sampling)."""
        return RunOptions(backend=self.backend, memory_budget=self.budget, cache_policy=self.policy,
                          prefetch=self.prefetch, cold=self.cold, threads=self.threads, preload=self.preload,
                          engine=self.engine or None, **parse_selection(self.selection), **kw)


def parse_selection(spec: str) -> dict:
    """edge-bench's name for a set of edge-run selection options: '+'-joined parts, each k<N>
    (--experts-per-token N), wait / compressed / skip (--on-miss), below=<W> (--skip-below W) or bias=<D>
    (--cache-bias D); e.g. "k1", "compressed", "skip+below=0.3", "bias=1". "" or "default": none of them."""
    out = {}
    for part in filter(None, spec.split("+")):
        try:
            if part == "default":
                continue
            if part in ("wait", "compressed", "skip"):
                out["on_miss"] = part
            elif part.startswith("k") and part[1:].isdigit():
                out["experts_per_token"] = int(part[1:])
            elif part.startswith("below="):
                out["skip_below"] = float(part[6:])
            elif part.startswith("bias="):
                out["cache_bias"] = float(part[5:])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"cannot read selection {spec!r} at {part!r}: use '+'-joined k<N>, wait, compressed, "
                             "skip, below=<W>, bias=<D>") from None
    return out


def matrix(artifacts, backends, budgets, policies, prefetch_modes, cold, ram_caps=(None,), threads=(1,),
           selections=("",), engines=("",)) -> list[Config]:
    """All combinations, plus the baselines: all experts resident and no cache, per artifact/backend/engine/
    thread count (uncapped). Each RAM cap repeats the budget/policy combinations under that cap; each selection
    the budgets'. The native engine runs ExecuTorch only: it is left out of the ONNX backend's runs."""
    out = []
    for a, b, e, t in itertools.product(artifacts, backends, engines, threads):
        if not engine_runs(e, b):
            continue
        out.append(Config(a, b, "all", "lru", False, cold, threads=t, engine=e))
        out.append(Config(a, b, "all", "none", False, cold, threads=t, engine=e))
        for cap, budget, policy, pre, sel in itertools.product(ram_caps, budgets, policies, prefetch_modes,
                                                                selections):
            c = Config(a, b, budget, policy, pre, cold, cap, t, selection=sel, engine=e)
            if c not in out:
                out.append(c)
    return out


def run_once(c: Config, prompt: str, max_new_tokens: int, model: str | None, temperature: float = 0.0,
             timeout: float | None = None) -> dict:
    """One run in a fresh process: its report, or {"error"} (with "oom" or "timeout" when it was killed)."""
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "r.json"
        if c.policy == "eager":
            cmd = [sys.executable, "-m", "cosmoe_edge.bench.eager", model, "--prompt", prompt, "--max-new-tokens",
                   str(max_new_tokens), "--report", str(report)]
        else:
            cmd = command(c.artifact, c.run_options(prompt=prompt, max_new_tokens=max_new_tokens,
                                                    temperature=temperature), report=report)
        _, figures = measured(cmd, c.ram_cap, timeout)
        if "error" in figures:
            return figures
        r = json.loads(report.read_text())
        if problems := report_schema.problems(r):  # never a silent zero for a key the writer left out
            return {"error": "the report does not follow report.schema.json: " + "; ".join(problems)}
        if "cgroup_peak_bytes" in figures:
            r["cgroup_peak_bytes"] = figures["cgroup_peak_bytes"]  # page cache included, as the cap saw it
        return r


def measured(cmd: list[str], ram_cap: int | None, timeout: float | None = None):
    """Run cmd in a fresh process (inside a memory cgroup of ram_cap bytes, if given): its Measured, and its
    peak RSS, bytes read and cgroup peak, or {"error"} (with "oom" or "timeout" when it was killed)."""
    cap_peak = None
    if ram_cap:
        with RamCap(ram_cap) as cap:
            m = run_measured(cmd, preexec_fn=cap.join, timeout=timeout)
            cap_peak = cap.peak_bytes()
    else:
        m = run_measured(cmd, timeout=timeout)
    if timeout is not None and m.wall_s >= timeout:
        return m, {"error": "timeout", "timeout": True}
    if killed_for_memory(m.returncode):
        return m, {"error": "oom", "oom": True}
    if m.returncode != 0:
        lines = (m.stderr or m.stdout).strip().splitlines()
        return m, {"error": lines[-1] if lines else f"exit code {m.returncode}"}
    return m, {"peak_rss_bytes": m.peak_rss_bytes, "storage_read_bytes": m.read_bytes} | (
        {"cgroup_peak_bytes": cap_peak} if cap_peak is not None else {})


def run_eval(c: Config, tokens: int) -> dict:
    """edge-eval of this configuration in a fresh process: perplexity of the artifact's held-out text as the
    runtime runs it, with that run's speed and misses (the quality axis of the speed-quality frontier)."""
    from cosmoe_edge.runtime.eval_cli import command as eval_command

    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "eval.json"
        p = subprocess.run(eval_command(c.artifact, c.run_options(prompt="-"), tokens, report), capture_output=True,
                           text=True)
        if p.returncode != 0:
            lines = (p.stderr or p.stdout).strip().splitlines()
            return {"eval_error": lines[-1] if lines else f"exit code {p.returncode}"}
        r = json.loads(report.read_text())
    return {"perplexity": r["perplexity"], "eval_tokens": r["tokens_scored"], "eval_tokens_per_s": r["tokens_per_s"],
            "eval_misses_per_token": r["misses_per_token"]}


def reduce(c: Config, reports: list[dict]) -> dict:
    row = asdict(c) | {"label": c.label, "runs": len(reports)}
    errors = [r["error"] for r in reports if "error" in r]
    ok = [r for r in reports if "error" not in r]
    row["oom_runs"] = sum(1 for r in reports if r.get("oom"))
    row["status"] = "oom" if row["oom_runs"] else ("failed" if errors else "ok")
    if errors:
        row["error"] = errors[0]
    if not ok:
        return row
    for k in report_schema.numeric_keys():
        vals = [r[k] for r in ok]
        row[k] = statistics.median(vals)
        row[k + "_min"], row[k + "_max"] = min(vals), max(vals)
    for k in ("p50", "p95", "max"):
        row[f"token_latency_{k}_ms"] = statistics.median(r["token_latency_ms"][k] for r in ok)
    for k in ("quant", "backend", "engine"):  # engine: the one that ran (the report's, "" resolved)
        row[k] = ok[0][k]
    if all("cgroup_peak_bytes" in r for r in ok):
        row["cgroup_peak_bytes"] = statistics.median(r["cgroup_peak_bytes"] for r in ok)
    row["prefetch_issued"] = statistics.median(r["prefetch"]["issued"] for r in ok)
    row["prefetch_useful"] = statistics.median(r["prefetch"]["useful"] for r in ok)
    row["selection_counts"] = ok[0]["selection"]
    for k in ("bytes_read", "bytes_read_decode"):  # the PEER layers' rows (0 without)
        row[f"rows_{k}"] = statistics.median(r["rows"][k] for r in ok)
    row["text"] = ok[0].get("text", "")
    row["processes"] = [r.get("process") for r in ok]
    return row


def engine_key(row) -> tuple[str, str]:
    """(artifact, backend with its engine): what a budget's ratio is taken within."""
    return row["artifact"], row["backend"] + (f":{row['engine']}" if row.get("engine") else "")


def all_resident(rows) -> dict:
    """{engine_key(row): row} of the upper-bound runs (every expert resident, LRU), the reference that ratios and
    device estimates are taken against."""
    return {engine_key(r): r for r in rows
            if r["policy"] == "lru" and r["budget"] == "all" and "decode_tokens_per_s" in r}
