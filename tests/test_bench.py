import csv
import json
import subprocess
import sys


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
