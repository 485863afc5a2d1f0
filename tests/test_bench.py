import csv
import json
import subprocess
import sys

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
