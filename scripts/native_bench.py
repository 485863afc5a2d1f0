"""The native engine against the Python engine on one machine, in one run (issue 32): each run a fresh
`edge-run` process on the same ExecuTorch artifact, warm page cache, greedy, the same prompt and token count.

Measured per engine: decode tok/s at 100 / 50 / 25 / 12.5% of the experts' bytes (median of --repeats), the
fixed cost (peak RSS at full RAM minus the bytes of every weight file the run maps: BENCHMARKS.md's definition),
the second thread's gain, and the cost of a miss with and without the prepared cache (edge-prepare). With
--cold-miss ARTIFACT, also a miss cold on that artifact (edge-run-native, its evicted pages dropped, so that every
miss reads from storage) against a cold read of as many bytes from the same packed file.
Writes docs/bench/native/results.json and prints the Markdown table docs/BENCHMARKS.md carries.

    .venv/bin/python scripts/native_bench.py artifact --repeats 3 --cold-miss runs/bench/moe-1.2b-s32-int4
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cosmoe_edge.runtime.cli import command
from cosmoe_edge.runtime.manifest import load_manifest
from cosmoe_edge.runtime.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The list type is"


def one_run(artifact: Path, cache: Path, **kw) -> dict:
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "r.json"
        o = RunOptions(prompt=PROMPT, max_new_tokens=kw.pop("tokens"), **kw)
        r = subprocess.run(command(artifact, o, report=report), capture_output=True, text=True, timeout=600,
                           env=os.environ | {"COSMOE_EDGE_CACHE": str(cache)})
        if r.returncode:
            sys.exit(f"native_bench: a run failed: {r.stderr.strip().splitlines()[-1]}")
        return json.loads(report.read_text())


def median_run(artifact, cache, repeats, **kw) -> dict:
    runs = [one_run(artifact, cache, **kw) for _ in range(repeats)]
    keys = ("decode_tokens_per_s", "ttft_ms", "peak_rss_bytes", "expert_load_ms", "expert_loads", "expert_misses")
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["text"] = runs[0]["text"]
    return out


def weight_bytes(artifact: Path) -> int:
    m = load_manifest(artifact)
    s = m["backends"]["executorch"]
    return (m["embedding"]["bytes"] + sum(f["bytes"] for f in s["backbone"]["files"]) +
            sum(e["bytes"] for e in s["experts"]))


def cold_miss(artifact: Path, cache: Path, repeats: int) -> dict:
    from tokenizers import Tokenizer

    from cosmoe_edge.runtime.manifest import artifact_files, expert_cost
    from cosmoe_edge.runtime.metrics import drop_page_cache
    from cosmoe_edge.runtime.native import host
    from cosmoe_edge.runtime.prepare import prepare, prepared_cache

    packed = prepared_cache(artifact)  # the device's own, as edge-run finds it; else one made for this run
    if packed is None:
        prepare(artifact, cache)
        packed = prepared_cache(artifact, cache)
    m = load_manifest(artifact)
    ids = Tokenizer.from_file(str(artifact / m["tokenizer"]["path"])).encode(PROMPT).ids
    misses = []
    for _ in range(repeats):
        drop_page_cache(artifact_files(artifact, m) + [packed])
        r = subprocess.run([str(host()), str(artifact), "--ids", ",".join(map(str, ids)), "--max-new-tokens", "32",
                            "--memory-budget", "12.5%", "--evicted-pages", "drop", "--no-verify",
                            "--packed-cache", str(packed)], capture_output=True, text=True, timeout=600, check=True)
        out = json.loads(r.stdout)
        misses.append(out["expert_load_ms"] / out["expert_loads"])
    # the bytes of one expert, read cold from the same file at spread offsets, without read-around
    n = int(statistics.median(expert_cost(e) for e in m["backends"]["executorch"]["experts"]))
    size, reads = packed.stat().st_size, []
    for i in range(8):
        drop_page_cache([packed])
        fd = os.open(packed, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        t = time.perf_counter()
        os.pread(fd, n, (size - n) * i // 8 // 4096 * 4096)
        reads.append((time.perf_counter() - t) * 1e3)
        os.close(fd)
    miss, read = statistics.median(misses), statistics.median(reads)
    return {"artifact": str(artifact), "expert_bytes": n, "miss_ms": miss, "cold_read_ms": read, "ratio": miss / read}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "native" / "results.json")
    ap.add_argument("--cold-miss", type=Path, help="an artifact to time a cold miss on (edge-run-native)")
    a = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="native-bench-cache-"))
    base = dict(backend="executorch", tokens=a.tokens)
    rows = {}
    for engine in ("python", "native"):
        for budget in ("100%", "50%", "25%", "12.5%"):
            rows[f"{engine} {budget}"] = median_run(a.artifact, cache, a.repeats, engine=engine, memory_budget=budget,
                                                    **base)
            print(f"{engine} {budget}: {rows[f'{engine} {budget}']['decode_tokens_per_s']:.0f} tok/s", file=sys.stderr)
        rows[f"{engine} 100% 2 threads"] = median_run(a.artifact, cache, a.repeats, engine=engine, threads=2,
                                                      memory_budget="100%", **base)
    # a miss with the prepared cache: edge-prepare once, then the same 12.5% run
    subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.prepare_cli", str(a.artifact), "--cache-dir",
                    str(cache)], check=True, capture_output=True)
    rows["native 12.5% prepared"] = median_run(a.artifact, cache, a.repeats, engine="native", memory_budget="12.5%",
                                               **base)
    cold = cold_miss(a.cold_miss, cache, a.repeats) if a.cold_miss else None
    texts = {r["text"] for r in rows.values()}
    weights = weight_bytes(a.artifact)
    result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), ""),
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["scripts/native_bench.py", *sys.argv[1:]]),
              "tokens": a.tokens, "repeats": a.repeats, "weight_bytes": weights, "same_text_everywhere": len(texts) == 1,
              "rows": rows, "cold_miss": cold}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    py, nat = rows["python 100%"], rows["native 100%"]
    print(f"{result['cpu']}, {result['date']}, {a.tokens} tokens, median of {a.repeats} fresh processes; "
          f"identical text in every run: {result['same_text_everywhere']}\n")
    print("| run | python tok/s | native tok/s | native / python |")
    print("|---|---:|---:|---:|")
    for b in ("100%", "50%", "25%", "12.5%", "100% 2 threads"):
        p, n = rows[f"python {b}"]["decode_tokens_per_s"], rows[f"native {b}"]["decode_tokens_per_s"]
        print(f"| {b} | {p:,.0f} | {n:,.0f} | {n / p:.2f}x |")
    print()
    mb = lambda x: x / 1e6  # noqa: E731
    print(f"fixed cost (peak RSS at full RAM - {mb(weights):.1f} MB of weight files): python "
          f"{mb(py['peak_rss_bytes'] - weights):.1f} MB, native {mb(nat['peak_rss_bytes'] - weights):.1f} MB")
    for engine in ("python", "native"):
        one, two = rows[f"{engine} 100%"], rows[f"{engine} 100% 2 threads"]
        print(f"second thread, {engine}: {two['decode_tokens_per_s'] / one['decode_tokens_per_s']:.2f}x")
    for name in ("python 12.5%", "native 12.5%", "native 12.5% prepared"):
        r = rows[name]
        print(f"expert load, {name}: {r['expert_load_ms'] / max(1, r['expert_loads']):.3f} ms "
              f"({r['expert_loads']:.0f} loads)")
    if cold:
        print(f"cold miss, {cold['artifact']}: {cold['miss_ms']:.2f} ms against {cold['cold_read_ms']:.2f} ms to read "
              f"its {mb(cold['expert_bytes']):.1f} MB cold: {cold['ratio']:.2f}x")
    n = rows["native 12.5%"]["decode_tokens_per_s"], rows["native 100%"]["decode_tokens_per_s"]
    print(f"native budget curve: 25% / 100% = {rows['native 25%']['decode_tokens_per_s'] / n[1]:.2f}, "
          f"12.5% / 100% = {n[0] / n[1]:.2f}")


if __name__ == "__main__":
    main()
