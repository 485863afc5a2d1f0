"""PEER layers exported and run (issue 15, steps 3-4): the layer program's sub-key scores, the pool as row files,
retrieval in the runtime, and the row cache under the memory budget."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.numpy import load_file

from cosmoe_edge.errors import ArtifactError, ExportError, RequestError
from cosmoe_edge.export.peer_rows import quantize_rows
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.peer import product_key_topk
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.manifest import sha256_file
from cosmoe_edge.runtime.options import RunOptions
from cosmoe_edge.runtime.rows import RowCache, retrieve, runs
from cosmoe_edge.runtime.run import run

PROMPT = ("Python is an easy to learn, powerful programming language. It has efficient high-level data structures "
          "and a simple but effective approach to object-oriented programming.")


def peer_config(**kw):
    return tiny_config(ffn="moe,peer", peer_experts=1024, peer_heads=2, peer_topk=4, peer_key_dim=16, **kw)


@pytest.fixture(scope="module")
def peer_model(tmp_path_factory, small_corpus):
    """A tiny model, layer 0 MoE and layer 1 PEER (32^2 experts), trained a little: BatchNorm's running
    statistics and the retrieval are then the model's own, not an initialisation's."""
    from cosmoe_edge.model.train import TrainOptions
    from cosmoe_edge.model.train import run as train

    path = tmp_path_factory.mktemp("peer") / "peer.pt"
    train(peer_config(), TrainOptions(steps=30, batch_size=8, seq_len=64, eval_every=1000, eval_windows=4, warmup=5,
                                      lr=3e-3), path, small_corpus, None, quiet=True)
    return path


@pytest.fixture(scope="module")
def peer_fp32(tmp_path_factory, peer_model):
    from cosmoe_edge.export.artifact import export_artifact

    out = tmp_path_factory.mktemp("peer_fp32") / "artifact"
    export_artifact(peer_model, out, "fp32", 32, ["executorch", "onnx"], jobs=2, verify=True)
    return out


@pytest.fixture(scope="module")
def peer_int8(tmp_path_factory, peer_model):
    from cosmoe_edge.export.artifact import export_artifact

    out = tmp_path_factory.mktemp("peer_int8") / "artifact"
    export_artifact(peer_model, out, "int8", 32, ["onnx"], jobs=2, verify=True)
    return out


def manifest(artifact):
    return json.loads((artifact / "manifest.json").read_text())


@pytest.mark.parametrize("n,k,heads", [(8, 3, 1), (32, 4, 2), (16, 16, 3)])
def test_runtime_retrieval_equals_the_model(n, k, heads):
    """rows.retrieve from the program's score layout gives the model's experts and softmax weights."""
    g = torch.Generator().manual_seed(n * k)
    q = torch.randn(5, heads, 8, generator=g, dtype=torch.float64)
    sub_keys = torch.randn(2, n, 4, generator=g, dtype=torch.float64)
    scores, ids = product_key_topk(q, sub_keys, k)
    half = torch.einsum("thjd,jnd->thjn", q.view(5, heads, 2, 4), sub_keys)  # (T, heads, 2, n): the program's order
    got_ids, got_w = retrieve(half.reshape(5, -1).numpy(), heads, k, n)
    want = {(t, h, i): w for t in range(5) for h in range(heads)
            for i, w in zip(ids[t, h].tolist(), scores[t, h].softmax(-1).tolist(), strict=True)}
    got = {(t, h, int(i)): float(w) for t in range(5) for h in range(heads)
           for i, w in zip(got_ids[t, h], got_w[t, h], strict=True)}
    assert got.keys() == want.keys() and all(got[key] == pytest.approx(want[key], rel=1e-5) for key in got)


def row_file(tmp_path, n=64, rb=8, page=32):
    rows = (np.arange(n * rb).reshape(n, rb) % 251).astype(np.uint8)
    path = tmp_path / "rows"
    path.write_bytes(rows.tobytes())
    hashes = np.frombuffer(b"".join(hashlib.sha256(rows.tobytes()[p:p + page]).digest()
                                    for p in range(0, n * rb, page)), np.uint8).reshape(-1, 32)
    return rows, path, hashes


def test_row_cache_keeps_rows_within_its_budget_least_recently_used_first(tmp_path):
    rows, path, hashes = row_file(tmp_path)  # 64 records of 8 bytes, 4 per 32-byte page
    cache = RowCache({0: (path, 8)}, page_bytes=32, budget=6 * 8, hashes={0: hashes})
    got = cache.records(0, np.array([5, 9, 5]))  # pages 1 and 2 (one pread); neighbours fill the free slots
    assert (got == rows[[5, 9, 5]]).all()
    assert (cache.misses, cache.hits, cache.pages_read, cache.bytes_read, cache.rows_used) == (2, 0, 2, 64, 3)
    assert cache.resident(0) == [4, 5, 6, 7, 8, 9]
    assert (cache.records(0, np.array([4])) == rows[[4]]).all()  # a neighbour that came along: a hit
    assert (cache.misses, cache.hits, cache.pages_read) == (2, 1, 2)
    got = cache.records(0, np.array([62, 63]))  # page 15: two never-used neighbours go first; no room for others
    resident = cache.resident(0)
    assert (got == rows[[62, 63]]).all() and len(resident) == 6 and {4, 5, 9, 62, 63} <= set(resident)
    assert cache.records(0, np.array([5, 9]))[0].tolist() == rows[5].tolist() and cache.hits == 3
    cache.records(0, np.array([20, 21, 22]))  # evicts the neighbour, then 4 (used at tick 2), then one of 62, 63
    resident = cache.resident(0)
    assert {5, 9, 20, 21, 22} <= set(resident) and len(set(resident) & {62, 63}) == 1 and 4 not in resident
    assert cache.bytes == cache.peak_bytes == 48 <= cache.budget
    with pytest.raises(RequestError, match="cannot hold the 7 rows one token needs"):
        cache.records(0, np.arange(7))
    assert runs([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 1), (9, 2)]
    cache.close()
    cache = RowCache({0: (path, 8)}, page_bytes=32, budget=10 * 8, hashes={0: hashes})
    cache.fill(chunk_pages=2)  # what fits, in file order; counters from zero
    assert cache.resident(0) == list(range(10)) and (cache.bytes_read, cache.misses) == (0, 0)
    assert (cache.records(0, np.array([9, 3])) == rows[[9, 3]]).all() and cache.hits == 2
    cache.close()


def test_row_cache_checks_each_page_it_reads(tmp_path):
    rows, path, hashes = row_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[8 * 41] ^= 1  # a flipped bit in record 41: page 10
    path.write_bytes(bytes(data))
    cache = RowCache({0: (path, 8)}, page_bytes=32, budget=64 * 8, hashes={0: hashes})
    assert (cache.records(0, np.array([0, 63])) == rows[[0, 63]]).all()  # other pages read and checked
    with pytest.raises(ArtifactError, match="page 10 of rows does not match its sha256"):
        cache.records(0, np.array([40]))
    cache.close()


def test_fp32_peer_artifact_matches_eager(peer_fp32, peer_model):
    """The PEER layer's program (BatchNorm folded, sub-key scores) and the runtime's retrieval and rows give the
    eager model's logits (fp32, 1e-3) and its greedy tokens, on both backends."""
    m = manifest(peer_fp32)
    for backend in ("executorch", "onnx"):
        v = m["verification"][backend]
        assert v["passed"] and v["greedy"]["greedy_identical"] and v["greedy"]["max_logit_diff"] <= 1e-3, v
        assert v["heldout"]["top1_agreement"] == 1.0
        # the PEER layer has no experts; only the MoE layer's are files
        assert {e["layer"] for e in m["backends"][backend]["experts"]} == {0}
    d = m["backends"]["executorch"]["delegation"]
    assert d["portable_ops"] == {} and d["backbone_delegate_calls"]["layer_1"] == 1  # one XNNPACK call, all of it
    model = load_model(peer_model)[0]
    p = m["peer"]
    assert (p["dtype"], p["heads"], p["top_k"], p["sub_keys"]) == ("fp32", 2, 4, 32) and "scales" not in p
    entry = p["layers"]["1"]
    path = peer_fp32 / entry["path"]
    assert entry["bytes"] == path.stat().st_size == 1024 * 2 * 64 * 4 and entry["sha256"] == sha256_file(path)
    pages = np.fromfile(peer_fp32 / entry["page_sha256"]["path"], np.uint8).reshape(-1, 32)
    data = path.read_bytes()
    assert len(pages) == 1024 // 8 and pages[5].tobytes() == hashlib.sha256(data[5 * 4096:6 * 4096]).digest()
    records = np.fromfile(path, dtype=np.float32).reshape(1024, 2 * 64)  # record i: u_i then v_i
    assert (records[:, :64] == model.layers[1].ffn.w_in.weight.detach().numpy()).all()
    assert (records[:, 64:] == model.layers[1].ffn.w_out.weight.detach().numpy()).all()


def test_int8_rows_are_the_pool_per_row_quantised(peer_int8, peer_model):
    m = manifest(peer_int8)
    p = m["peer"]
    assert p["dtype"] == "int8" and p["layers"]["1"]["record_bytes"] == 2 * 64
    assert m["verification"]["onnx"]["passed"]
    ffn = load_model(peer_model)[0].layers[1].ffn
    q = np.fromfile(peer_int8 / p["layers"]["1"]["path"], dtype=np.int8).reshape(1024, 128).astype(np.float32)
    scales = load_file(str(peer_int8 / p["scales"]["path"]))
    for half, table in ((slice(0, 64), ffn.w_in.weight), (slice(64, 128), ffn.w_out.weight)):
        name = "u" if half.start == 0 else "v"
        t = table.detach().numpy()
        err = np.abs(q[:, half] * scales[f"layer_1.{name}"][:, None] - t)
        assert (err <= scales[f"layer_1.{name}"][:, None] * 0.5 + 1e-7).all()
    qq, s = quantize_rows(np.zeros((2, 4), np.float32))
    assert (qq == 0).all() and (s == 1).all()  # an all-zero row keeps a finite scale


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_greedy_tokens_identical_at_every_budget_with_rows_within_theirs(peer_fp32, backend):
    engine = Engine(peer_fp32, backend)
    least = engine.min_budget  # the MoE layer's two largest experts and the pages of one token's rows
    engine.close()
    full, small = (run(peer_fp32, RunOptions(prompt=PROMPT, max_new_tokens=24, backend=backend, memory_budget=budget))
                   for budget in ("all", str(least)))
    assert small["text"] == full["text"] and small["generated_tokens"] == full["generated_tokens"]
    for r in (full, small):
        rows = r["rows"]
        assert rows["resident_bytes_peak"] <= rows["budget_bytes"] <= r["memory_budget_bytes"]
        assert rows["rows_used"] == (r["prompt_tokens"] + r["generated_tokens"] - 1) * 2 * 4  # heads x top-k
        assert rows["row_hits"] + rows["row_misses"] <= rows["rows_used"] and rows["total_bytes"] == 1024 * 512
        assert rows["bytes_read"] == rows["pages_read"] * 4096 and rows["pages_read"] <= rows["row_misses"]
    # all rows fit: no page is read twice; at the least budget pages are evicted and read again
    assert full["rows"]["bytes_read"] <= full["rows"]["total_bytes"]
    assert small["rows"]["row_misses"] > full["rows"]["row_misses"]
    assert small["rows"]["budget_bytes"] < full["rows"]["total_bytes"]
    assert small["resident_expert_bytes_peak"] <= small["memory_budget_bytes"]


def test_preload_reads_the_pool_up_front(peer_fp32):
    lazy = run(peer_fp32, RunOptions(prompt=PROMPT, max_new_tokens=8, backend="onnx"))
    r = run(peer_fp32, RunOptions(prompt=PROMPT, max_new_tokens=8, backend="onnx", preload=True))
    assert r["text"] == lazy["text"] and r["rows"]["row_misses"] == r["rows"]["bytes_read"] == 0
    assert r["rows"]["resident_bytes_peak"] == r["rows"]["total_bytes"] and lazy["rows"]["bytes_read"] > 0


def test_a_budget_below_a_token_s_rows_is_one_line(peer_fp32):
    with pytest.raises(RequestError, match="the rows one token reads in its PEER layers"):
        run(peer_fp32, RunOptions(prompt="x", max_new_tokens=1, backend="onnx", memory_budget="1KB"))


def test_prefetch_skips_a_peer_layer_and_cold_drops_its_rows(peer_fp32):
    r = run(peer_fp32, RunOptions(prompt=PROMPT, max_new_tokens=4, backend="onnx", prefetch=True, cold=True))
    assert r["prefetch"]["issued"] == 0  # layer 0's next layer is PEER: nothing to guess for it
    assert r["rows"]["pages_read"] > 0


def test_edge_bench_runs_a_peer_artifact_and_counts_its_rows(peer_fp32, tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.bench.cli", str(peer_fp32), "--budgets", "40%",
                        "--backends", "onnx", "--policies", "lru", "--max-new-tokens", "12", "--repeats", "1",
                        "--prompts", str(write_prompt(tmp_path)), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {(row["budget"], row["policy"]): row for row in json.loads((out / "results.json").read_text())["rows"]}
    for row in (rows[("all", "lru")], rows[("40%", "lru")]):
        assert row["status"] == "ok" and row["rows_bytes_read"] > 0 and row["rows_bytes_read_decode"] >= 0
        assert row["loaded_kb_per_token"] * 1e3 >= row["rows_bytes_read_decode"] / (row["generated_tokens"] - 1)
        assert 0 < row["bound_tokens_per_s"]
    assert (out / "loaded_per_token.png").is_file()


def write_prompt(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPT + "\n")
    return path


def test_export_refuses_dense_layers_in_one_line(tmp_path):
    from cosmoe_edge.export.artifact import export_artifact
    from cosmoe_edge.model.checkpoint import save_checkpoint
    from cosmoe_edge.model.model import CoSMoE
    from cosmoe_edge.model.tokenizer import train_tokenizer

    cfg = tiny_config(ffn="moe,dense")
    tok = train_tokenizer(["a b c d e f"] * 10, cfg.vocab_size)
    save_checkpoint(tmp_path / "m.pt", CoSMoE(cfg), tok.to_str(), {})
    with pytest.raises(ExportError, match="a dense layer has nothing to load lazily"):
        export_artifact(tmp_path / "m.pt", tmp_path / "out", "fp32", 32, ["onnx"], jobs=1, verify=False)
    assert not os.path.exists(tmp_path / "out")
