import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_bench_writes_schema_records_failures_and_isolates_runs(int4_artifact, tiny_model, tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.bench.cli", str(int4_artifact), "--budgets", "50%,1KB",
                        "--backends", "onnx", "--policies", "lru", "--max-new-tokens", "8", "--repeats", "2",
                        "--out", str(out), "--model", str(tiny_model), "--estimate", "phone-ufs3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    rows = {(row["budget"], row["policy"]): row for row in data["rows"]}
    # baselines always present: all resident, no cache, eager
    assert {("all", "lru"), ("all", "none"), ("50%", "lru"), ("1KB", "lru"), ("all", "eager")} <= set(rows)
    # every report, the eager baseline's included, followed report.schema.json (else the run is an error)
    assert not [row["error"] for key, row in rows.items() if key != ("1KB", "lru") and "error" in row]
    # a failing configuration is recorded, the others still ran
    assert "below the minimum" in rows[("1KB", "lru")]["error"]
    ok = rows[("50%", "lru")]
    for key in ("decode_tokens_per_s", "decode_tokens_per_s_min", "decode_tokens_per_s_max", "ttft_ms",
                "peak_rss_bytes", "expert_hit_rate", "storage_read_bytes", "bound_tokens_per_s",
                "estimate_phone-ufs3_tokens_per_s"):
        assert key in ok, key
    assert ok["runs"] == 2 and ok["decode_tokens_per_s_min"] <= ok["decode_tokens_per_s"] <= ok["decode_tokens_per_s_max"]
    # every run in its own process (pid and start time: pids alone get reused)
    procs = [p for row in data["rows"] for p in row.get("processes", [])]
    assert len(procs) == len(set(procs)) >= 6
    # no cache means every expert use is a load
    assert rows[("all", "none")]["expert_hits"] == 0 and rows[("all", "lru")]["expert_evictions"] == 0
    with open(out / "results.csv") as f:
        header = next(csv.reader(f))
    assert {"artifact", "backend", "budget", "policy", "decode_tokens_per_s", "error"} <= set(header)
    assert {p.name for p in out.glob("*.png")} >= {"decode_ratio.png", "hit_rate.png", "peak_rss.png",
                                                  "read_per_token.png", "ttft.png"}
    assert data["machine"]["memory_gbps"] > 0 and data["estimates_are_estimates"]


def test_bench_selections_with_quality_draw_the_frontier(int4_artifact, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "cosmoe_edge.bench.cli", str(int4_artifact), "--budgets", "50%", "--backends", "onnx",
           "--policies", "lru", "--max-new-tokens", "8", "--repeats", "1", "--out", str(out),
           "--selections", "default,k1,skip+below=0.6,bias=1", "--quality-tokens", "48"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {(row["budget"], row["selection"]): row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert {("50%", ""), ("50%", "k1"), ("50%", "skip+below=0.6"), ("50%", "bias=1")} <= set(rows)
    for key in [k for k in rows if k[0] == "50%"]:
        assert rows[key]["eval_tokens"] == 48 and rows[key]["perplexity"] > 1, key
    k1 = rows[("50%", "k1")]["selection_counts"]
    assert k1["experts_per_token"] == 1 and k1["experts_run"] > 0
    assert rows[("50%", "bias=1")]["selection_counts"]["cache_bias"] == 1.0
    assert (out / "frontier.png").is_file()
    bad = subprocess.run(cmd[:-4] + ["--selections", "k1+later"], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot read selection 'k1+later' at 'later'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_bench_engines_are_a_dimension_with_the_same_tokens(int4_artifact, tmp_path):
    from cosmoe_edge.bench.runs import matrix

    configs = matrix(["a"], ["executorch", "onnx"], ["50%"], ["lru"], [False], False, engines=("native", "python"))
    # the native core runs ExecuTorch only: no native ONNX rows, and each engine has its own baselines
    assert {(c.backend, c.engine) for c in configs} == {("executorch", "native"), ("executorch", "python"),
                                                        ("onnx", "python")}
    assert sum(c.budget == "all" and c.policy == "lru" for c in configs) == 3
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "cosmoe_edge.bench.cli", str(int4_artifact), "--budgets", "50%", "--backends",
           "executorch", "--policies", "lru", "--max-new-tokens", "6", "--repeats", "1", "--out", str(out),
           "--engines", "native,python"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {(row["engine"], row["budget"], row["policy"]): row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {(e, b, p) for e in ("native", "python") for b, p in (("all", "lru"), ("all", "none"), ("50%", "lru"))}
    for b, p in (("all", "lru"), ("all", "none"), ("50%", "lru")):  # the same tokens and cache counts either way
        native, python = rows[("native", b, p)], rows[("python", b, p)]
        assert native["text"] == python["text"] and native["expert_misses"] == python["expert_misses"], (b, p)
    assert rows[("native", "50%", "lru")]["label"].startswith(f"{int4_artifact.name}/executorch:native/lru")
    bad = subprocess.run(cmd[:-2] + ["--engines", "java"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--engines must name native, python, host and/or default" in bad.stderr


def test_ram_cap_runs_under_a_cgroup_and_records_oom(int4_artifact, tmp_path):
    from cosmoe_edge.bench.ramcap import unavailable

    if why := unavailable():
        pytest.skip(why)
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.bench.cli", str(int4_artifact), "--budgets", "50%",
                        "--backends", "onnx", "--policies", "nextuse", "--max-new-tokens", "8", "--repeats", "1",
                        "--ram-cap", "2GB,30MB", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["ram_cap"]: row for row in json.loads((out / "results.json").read_text())["rows"]
            if row["budget"] == "50%"}
    ok, oom = rows[2 * 10**9], rows[30 * 10**6]
    assert ok["status"] == "ok" and ok["cold"] and 0 < ok["cgroup_peak_bytes"] <= 2 * 10**9
    assert oom["status"] == "oom" and oom["error"] == "oom" and "decode_tokens_per_s" not in oom
    with open(out / "results.csv") as f:
        header = next(csv.reader(f))
    assert {"ram_cap", "status", "oom_runs"} <= set(header)


def test_ram_cap_where_no_cgroup_can_be_made_is_one_line(int4_artifact, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cosmoe_edge.bench import cli, ramcap

    monkeypatch.setattr(ramcap, "CGROUP_ROOT", tmp_path / "no-cgroups")
    assert "needs root or a delegated cgroup" in ramcap.unavailable()
    r = CliRunner().invoke(cli.app, [str(int4_artifact), "--ram-cap", "200MB", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "cannot make a memory cgroup" in r.output, r.output
    r = CliRunner().invoke(cli.app, [str(int4_artifact), "--ram-cap", "25%", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "sizes like 200MB" in r.output, r.output


def test_llamacpp_build_flags_and_output():
    from cosmoe_edge.bench.llamacpp import cmake_flags, completion_text

    assert not any("amx" in f for f in cmake_flags({"avx2", "avx512f"}))
    assert any("-mno-amx-tile" in f for f in cmake_flags({"avx512f", "amx_tile", "amx_int8"}))
    # llama-completion's stdout with --no-display-prompt: the continuation, " [end of text]\n" if the model
    # ended it, then "\n\n" always
    assert completion_text(" a mutable sequence.\n\nThe list [end of text]\n\n\n") == " a mutable sequence.\n\nThe list"
    assert completion_text(" ran out of -n tokens\n\n") == " ran out of -n tokens"
    assert completion_text(" ends in newlines\n\n\n\n") == " ends in newlines\n\n"


# llama-bench -o json, two of its rows as this build prints them (keys the harness does not read dropped)
LLAMA_BENCH_JSON = """[
  {"build_commit": "0c1e570", "model_size": 88410112, "n_threads": 1, "repack": true, "n_prompt": 32,
   "n_gen": 0, "avg_ns": 64277299, "stddev_ns": 4135267, "avg_ts": 498.875350, "stddev_ts": 32.094925,
   "samples_ns": [67201364, 61353235], "samples_ts": [476.181, 521.57]},
  {"build_commit": "0c1e570", "model_size": 88410112, "n_threads": 2, "repack": false, "n_prompt": 0,
   "n_gen": 64, "avg_ns": 173437000, "stddev_ns": 4000000, "avg_ts": 369.0, "stddev_ts": 9.1,
   "samples_ns": [173437000], "samples_ts": [369.0]}
]"""
# the end of llama-completion's stderr (this build: common_perf_print; older ones: llama_perf_context_print)
LLAMA_COMPLETION_STDERR = """0.00.111.963 I generate: n_ctx = 512, n_batch = 2048, n_predict = 64, n_keep = 0
0.00.454.070 I common_perf_print:    sampling time =       8.95 ms
0.00.454.187 I common_perf_print:    samplers time =       6.72 ms /    68 tokens
0.00.454.296 I common_perf_print:        load time =      67.62 ms
0.00.454.402 I common_perf_print: prompt eval time =       9.11 ms /     4 tokens (    2.28 ms per token,   439.17 tokens \
per second)
0.00.454.510 I common_perf_print:        eval time =     312.76 ms /    63 runs   (    4.96 ms per token,   201.43 tokens \
per second)
0.00.454.614 I common_perf_print:       total time =     342.70 ms /    67 tokens
"""


def test_llamacpp_outputs_parse():
    from cosmoe_edge.bench.llamacpp import completion_command, parse_bench, parse_timings

    pp, tg = parse_bench(LLAMA_BENCH_JSON)
    assert (pp["test"], pp["threads"], pp["repack"], round(pp["tokens_per_s"], 2)) == ("pp32", 1, True, 498.88)
    assert (tg["test"], tg["threads"], tg["repack"], tg["tokens_per_s"], tg["commit"]) == ("tg64", 2, False, 369.0,
                                                                                          "0c1e570")
    t = parse_timings(LLAMA_COMPLETION_STDERR)
    assert t["load_ms"] == 67.62 and t["ttft_ms"] == 9.11 and t["prompt_tokens"] == 4
    assert t["generated_tokens"] == 64 and abs(t["decode_tokens_per_s"] - 63 / 0.31276) < 1e-6
    assert abs(t["prefill_tokens_per_s"] - 4 / 0.00911) < 1e-6
    old = LLAMA_COMPLETION_STDERR.replace("common_perf_print", "llama_perf_context_print")
    assert parse_timings(old) == t
    with pytest.raises(ValueError, match="no timings"):
        parse_timings(LLAMA_COMPLETION_STDERR.split("load time")[0])
    cmd = completion_command(Path("bin"), Path("m.gguf"), "Hi", 16, threads=2, temperature=1.0, repack=False,
                             mmap=False)
    assert cmd[:3] == ["bin/llama-completion", "-m", "m.gguf"] and "--ignore-eos" in cmd
    assert cmd[cmd.index("-t") + 1] == "2" and "--no-repack" in cmd and cmd[cmd.index("-lm") + 1] == "none"
    assert cmd[cmd.index("--temp") + 1] == "1.0" and cmd[cmd.index("--top-k") + 1] == "0"
    greedy = completion_command(Path("bin"), Path("m.gguf"), "Hi", 16)
    assert greedy[greedy.index("--top-k") + 1] == "1" and "-lm" not in greedy and "--no-repack" not in greedy


def test_run_measured_accounts_a_child_as_the_os_does(tmp_path):
    from cosmoe_edge.runtime.metrics import drop_page_cache, run_measured

    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * (8 << 20))
    drop_page_cache([data])
    # 200 MB touched, one file read from storage, output on both streams
    code = (f"import sys; b = bytearray(200_000_000); b[::4096] = b'x' * len(b[::4096]); "
            f"open({str(data)!r}, 'rb').read(); print('out'); print('err', file=sys.stderr); sys.exit(3)")
    m = run_measured([sys.executable, "-c", code])
    assert (m.returncode, m.stdout, m.stderr) == (3, "out\n", "err\n")
    assert 200e6 <= m.peak_rss_bytes < 400e6  # its own high-water mark, not the forked copy of this process
    assert m.read_bytes >= 8 << 20
    slow = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert slow.returncode == -9 and slow.wall_s < 10


def test_side_by_side_caps_and_rows():
    from cosmoe_edge.bench.side_by_side import Run, capped_runs, reduce, total_runs

    ours = [Run("cosmoe-edge", "onnx", "int4", 1, "preload"), Run("cosmoe-edge", "onnx", "int4", 1, "lazy")]
    theirs = [Run("llama.cpp", "llama.cpp", "Q4_0", 1, "repack"), Run("llama.cpp", "llama.cpp", "Q4_0", 1, "no-repack")]
    full = ours + theirs
    sizes = {r: ((50, 200) if r.engine == "cosmoe-edge" else (60, 220)) for r in full}
    # peak RSS at full RAM: a second copy of the weights (preload, repack) is not the engine's fixed cost
    rows = [{"peak_rss_bytes": p} for p in (600, 350, 560, 320)]
    caps = capped_runs(full, rows, sizes, [50.0])
    assert [r["fixed_bytes"] for r in rows] == [100, 100, 40, 40]
    # a lazy run holds only the experts it loaded: its own report says how many bytes
    lazy_rows = [{"peak_rss_bytes": 600}, {"peak_rss_bytes": 300, "resident_expert_bytes_peak": 120}]
    capped_runs(ours, lazy_rows, sizes, [])
    assert [r["fixed_bytes"] for r in lazy_rows] == [130, 130]
    got = {(run.engine, run.variant, run.cap_of): run.ram_cap for run, _ in caps}
    assert got == {("cosmoe-edge", "lazy", ""): 100 + 50 + 100, ("llama.cpp", "repack", ""): 40 + 60 + 110,
                   ("llama.cpp", "no-repack", ""): 40 + 60 + 110,  # preload runs only at full RAM
                   ("llama.cpp", "repack", "onnx"): 250, ("llama.cpp", "no-repack", "onnx"): 250}  # the same RAM
    assert len(caps) == len(got) and all(run.cap_pct == 50.0 and extra["base"].cap_pct is None for run, extra in caps)
    assert total_runs([("onnx", "python")], [1], ["Q4_0"], ["repack", "no-repack"], [50.0], 1) == 2 + 2 + 1 + 2 * 2
    repack = next(run for run, _ in caps if run.variant == "repack")
    row = reduce(repack, [{"error": "oom", "oom": True}, {"decode_tokens_per_s": 9.0, "peak_rss_bytes": 1},
                          {"decode_tokens_per_s": 11.0, "peak_rss_bytes": 3}], (60, 220), "llama.cpp x")
    assert row["status"] == "oom" and row["oom_runs"] == 1 and row["decode_tokens_per_s"] == 10.0
    assert (row["decode_tokens_per_s_min"], row["decode_tokens_per_s_max"], row["ram_cap"]) == (9.0, 11.0, 210)
    assert row["label"] == "llama.cpp repack Q4_0 t1" and row["version"] == "llama.cpp x"
    same = next(run for run, _ in caps if run.cap_of)
    assert same.label.endswith("at onnx's cap")
    # each runtime of a backend has its own fixed cost; llama.cpp's same-RAM cap is the lightest one's
    ours = [Run("cosmoe-edge", "executorch", "int4", 1, "lazy", runtime=e) for e in ("native", "python")]
    full = ours + theirs[:1]
    sizes = {r: (50, 200) for r in full}
    rows = [{"peak_rss_bytes": p} for p in (320, 650, 300)]
    caps = {(run.engine, run.runtime, run.cap_of): run.ram_cap for run, _ in capped_runs(full, rows, sizes, [50.0])}
    assert caps == {("cosmoe-edge", "native", ""): 70 + 50 + 100, ("cosmoe-edge", "python", ""): 400 + 50 + 100,
                    ("llama.cpp", "", ""): 50 + 50 + 100, ("llama.cpp", "", "executorch/native"): 220}
    assert ours[0].label == "cosmoe-edge executorch/native lazy int4 t1"
    from cosmoe_edge.bench.side_by_side import cosmoe_paths

    m = {"backends": {}}
    assert cosmoe_paths(["executorch", "onnx"], ["", "native", "python", "host"], m) == [
        ("executorch", "native"), ("executorch", "python"), ("executorch", "host"), ("onnx", "python")]
    assert cosmoe_paths(["executorch"], [""], {"peer": {}}) == [("executorch", "python")]
    # shares of llama.cpp's footprint: one absolute cap for all; our budget is what it leaves after fixed + backbone
    from cosmoe_edge.bench.side_by_side import FOOTPRINT

    both = [Run("llama.cpp", "llama.cpp", "Q4_0", 1, v) for v in ("repack", "no-repack")]
    full = ours + both
    sizes = {r: (50, 200) if r.engine == "cosmoe-edge" else (60, 220) for r in full}
    rows = [{"peak_rss_bytes": p} for p in (320, 650, 600, 310)]  # llama.cpp: fixed 30 (no-repack), footprint 310
    capped = [(run, extra) for run, extra in capped_runs(full, rows, sizes, [], [60.0]) if run.cap_of == FOOTPRINT]
    assert {run.ram_cap for run, _ in capped} == {186} and {e["footprint_bytes"] for _, e in capped} == {310}
    budgets = {(run.engine, run.runtime, run.variant): run.budget for run, _ in capped}
    assert budgets == {("cosmoe-edge", "native", "lazy"): str(186 - 70 - 50), ("cosmoe-edge", "python", "lazy"): "1",
                       ("llama.cpp", "", "repack"): "", ("llama.cpp", "", "no-repack"): ""}
    assert capped[0][0].label == "cosmoe-edge executorch/native lazy int4 t1 at 60% of llama.cpp's footprint"
    assert total_runs([("executorch", "native")], [1], ["Q4_0"], ["repack"], [], 1, [60.0, 40.0]) == 2 + 1 + 2 * 2


def test_peer_refuses_what_it_cannot_compare(int4_artifact, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from cosmoe_edge.bench import cli

    def run(*args):
        return CliRunner().invoke(cli.app, [str(int4_artifact), "--out", str(tmp_path / "b"), *args])

    r = run("--peer", "llama.cpp")
    assert r.exit_code == 2 and "pass one artifact and --model" in r.output, r.output
    other = tmp_path / "other.pt"
    other.write_bytes(b"")
    r = run("--peer", "llama.cpp", "--model", str(other))
    assert r.exit_code == 2 and "the comparison needs the same weights" in r.output, r.output
    r = run("--peer", "vllm", "--model", str(tiny_model))
    assert r.exit_code == 2 and "the one peer engine is llama.cpp" in r.output, r.output
    r = run("--peer", "llama.cpp", "--model", str(tiny_model), "--ram-cap", "200MB")
    assert r.exit_code == 2 and "shares of the expert bytes" in r.output, r.output
    r = run("--peer", "llama.cpp", "--model", str(tiny_model), "--peer-quants", "Q2_K")
    assert r.exit_code == 2 and "--peer-quants must name" in r.output, r.output
    r = run("--threads", "0")
    assert r.exit_code == 2 and "--threads takes thread counts" in r.output, r.output
