import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cosmoe_edge.errors import ArtifactError, RequestError
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.generate import generate as eager_generate
from cosmoe_edge.runtime import RunOptions, run
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate
from cosmoe_edge.runtime.report import problems

PROMPT = "The list type is"
BACKENDS = ["executorch", "onnx"]


def greedy_tokens(artifact, backend, n=64, **kw):
    engine = Engine(artifact, backend, **kw)
    ids = engine_tokenizer_ids(artifact)
    out, _, _ = generate(engine, ids, n, Sampler())
    return out, engine


def engine_tokenizer_ids(artifact, prompt=PROMPT):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(artifact / "tokenizer.json")).encode(prompt).ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_greedy_equals_eager_for_64_tokens(fp32_artifact, tiny_model, backend):
    model, tok, _ = load_model(tiny_model)
    want = eager_generate(model, tok.encode(PROMPT).ids, 64)
    got, _ = greedy_tokens(fp32_artifact, backend)
    assert len(want) == 64 and got == want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["nextuse", "lru", "lfu"])
def test_any_budget_gives_the_same_tokens(int4_artifact, backend, policy):
    full, _ = greedy_tokens(int4_artifact, backend, n=48)
    engine = Engine(int4_artifact, backend)
    for budget in (engine.min_budget, engine.expert_bytes_total // 2):
        events = []

        def check(kind, key, resident, budget=budget, events=events):
            events.append(kind)
            assert resident <= budget  # at every load, eviction and hit

        got, e = greedy_tokens(int4_artifact, backend, n=48, budget_bytes=budget, policy=policy, on_cache_event=check)
        assert got == full
        assert e.cache.peak_bytes <= budget and e.cache.misses > 0
        if budget == engine.min_budget:
            assert e.cache.evictions > 0 and "evict" in events


def test_budget_below_one_layers_experts_is_refused(int4_artifact):
    engine = Engine(int4_artifact, "onnx")
    with pytest.raises(RequestError, match=f"minimum of {engine.min_budget:,} bytes"):
        Engine(int4_artifact, "onnx", budget_bytes=engine.min_budget - 1)


def test_report_has_the_contract_keys_and_consistent_counts(int4_artifact):
    r = run(int4_artifact, RunOptions(prompt=PROMPT, max_new_tokens=24, backend="onnx", memory_budget="50%"))
    assert problems(r) == []  # report.schema.json: every key, in its order, of its type
    assert r["generated_tokens"] == 24 and r["resident_expert_bytes_peak"] <= r["memory_budget_bytes"]
    assert r["memory_budget_bytes"] == r["expert_bytes_total"] // 2
    # each forward pass uses every layer's experts: top_k per layer for a decode step, the distinct experts
    # of the prompt's tokens (top_k to tokens x top_k) for the prefill; the last token is never fed back
    cfg = json.loads((int4_artifact / "manifest.json").read_text())["model"]
    per_step = cfg["n_layers"] * cfg["top_k"]
    uses = r["expert_hits"] + r["expert_misses"]
    assert per_step * 24 <= uses <= per_step * (r["prompt_tokens"] + 23)
    assert 0 <= r["expert_misses_decode"] <= r["expert_misses"]
    assert 0 <= r["expert_switch_rate"] <= 1 and r["peak_rss_bytes"] >= r["rss_after_load_bytes"]


def test_prefetch_keeps_tokens_and_budget(int4_artifact):
    base = run(int4_artifact, RunOptions(prompt=PROMPT, max_new_tokens=32, backend="onnx", memory_budget="50%"))
    pre = run(int4_artifact, RunOptions(prompt=PROMPT, max_new_tokens=32, backend="onnx", memory_budget="50%",
                                         prefetch=True))
    assert pre["text"] == base["text"]
    assert pre["prefetch"]["issued"] > 0 and 0 <= pre["prefetch"]["useful"] <= pre["prefetch"]["issued"]
    assert pre["resident_expert_bytes_peak"] <= pre["memory_budget_bytes"]


def test_sampling_is_seeded_and_top_k_1_is_greedy(int4_artifact):
    sampled = RunOptions(prompt=PROMPT, max_new_tokens=16, backend="onnx", temperature=0.9, top_p=0.9, seed=3)
    a = run(int4_artifact, sampled)["text"]
    b = run(int4_artifact, sampled)["text"]
    assert a == b
    greedy = run(int4_artifact, RunOptions(prompt=PROMPT, max_new_tokens=16, backend="onnx"))["text"]
    assert run(int4_artifact, RunOptions(prompt=PROMPT, max_new_tokens=16, backend="onnx", temperature=1.5,
                                    top_k=1, seed=7))["text"] == greedy
    s = Sampler(temperature=1.0, top_p=0.5, seed=0)
    logits = np.array([5.0, 4.9, 0.0, -1.0])
    assert {s(logits) for _ in range(50)} <= {0, 1}


def edge_run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, env=env)


def test_onnx_path_runs_without_torch(int4_artifact, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is not allowed on the onnx path')\n")
    import os

    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, env=env)
    assert probe.returncode != 0  # the blocker works
    r = edge_run(int4_artifact, "--prompt", PROMPT, "--backend", "onnx", "--max-new-tokens", "8",
                 "--report", tmp_path / "r.json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["generated_tokens"] == 8


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_two_threads_give_the_same_tokens(int4_artifact, tmp_path, backend):
    """Fresh processes: onnxruntime's shared thread pool is sized once per process."""
    texts = []
    for threads in (1, 2):
        report = tmp_path / f"r{threads}.json"
        r = edge_run(int4_artifact, "--prompt", PROMPT, "--backend", backend, "--max-new-tokens", "24", "--threads",
                     threads, "--memory-budget", "50%", "--report", report)
        assert r.returncode == 0, r.stderr[-2000:]
        texts.append(json.loads(report.read_text())["text"])
    assert texts[0] == texts[1]


def corrupt_copy(src, tmp_path, edit):
    dst = tmp_path / "art"
    shutil.copytree(src, dst)
    edit(dst, json.loads((dst / "manifest.json").read_text()))
    return dst


def _set_version(d, m):
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))


def _drop_backend(d, m):
    del m["backends"]["executorch"]
    (d / "manifest.json").write_text(json.dumps(m))


def _truncate_expert(d, m):
    p = d / m["backends"]["executorch"]["experts"][0]["path"]
    p.write_bytes(p.read_bytes()[:100])


def _flip_expert_byte(d, m):
    p = d / m["backends"]["executorch"]["experts"][0]["path"]
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("edit,message", [
    (_set_version, "format_version 99"),
    (_drop_backend, "no executorch programs"),
    (_truncate_expert, "truncated or replaced"),
    (_flip_expert_byte, "does not match its sha256"),
])
def test_bad_artifacts_give_one_clear_line(int4_artifact, tmp_path, edit, message):
    art = corrupt_copy(int4_artifact, tmp_path, edit)
    r = edge_run(art, "--prompt", PROMPT, "--backend", "executorch", "--max-new-tokens", "64")
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _damage(offset: int | None):
    """Same size, so only the program's own checks can tell: zeros everywhere, or one header byte set to 0xFF
    (at 0 the flatbuffer's root offset, at 4 its file identifier: ExecuTorch 1.5.1 segfaults or aborts on them)."""
    def edit(data: bytes) -> bytes:
        if offset is None:
            return bytes(len(data))
        b = bytearray(data)
        b[offset] = 0xFF
        return bytes(b)
    return edit


@pytest.mark.parametrize("backend,offset", [("executorch", None), ("executorch", 0), ("executorch", 4),
                                            ("onnx", None), ("onnx", 0)])
def test_corrupt_program_without_checksums_is_detected_not_run(int4_artifact, tmp_path, backend, offset):
    art = tmp_path / "art"
    shutil.copytree(int4_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    p = art / m["backends"][backend]["experts"][0]["path"]
    p.write_bytes(_damage(offset)(p.read_bytes()))
    r = edge_run(art, "--prompt", PROMPT, "--backend", backend, "--no-verify", "--memory-budget", "all")
    assert r.returncode == 2 and "corrupt" in r.stderr, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == PROMPT + "\n"  # the echoed prompt's line is ended, the run failed at the first expert


def test_user_errors_are_one_clear_line(int4_artifact, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        ((tmp_path / "nope", "--prompt", "x"), "artifact folder not found"),
        ((tmp_path / "empty", "--prompt", "x"), "no manifest.json"),
        ((int4_artifact, "--prompt", ""), "--prompt is empty"),
        ((int4_artifact, "--prompt", "x", "--backend", "tflite"), "unknown --backend"),
        ((int4_artifact, "--prompt", "x", "--memory-budget", "lots"), "cannot read memory budget"),
        ((int4_artifact, "--prompt", "x", "--memory-budget", "1KB"), "below the minimum"),
    ]
    for args, message in cases:
        r = edge_run(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr[-800:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# What the runtime may hold beyond the backbone and the expert budget: the KV cache pages it writes,
# activations and the decoded text. Stated in docs/RUNTIME.md; measured well below it.
RSS_OVERHEAD = 16 * 1024 * 1024


def check_rss_bound(artifact, backend, tmp_path):
    """Peak RSS within the RSS after loading the backbone + the budget + RSS_OVERHEAD, at 25% and all."""
    for budget in ("25%", "all"):
        report = tmp_path / f"{backend}-{budget}.json"
        r = edge_run(artifact, "--prompt", PROMPT, "--backend", backend, "--memory-budget", budget,
                     "--max-new-tokens", "64", "--report", report, "--quiet")
        assert r.returncode == 0, r.stderr[-1000:]
        rep = json.loads(report.read_text())
        assert rep["resident_expert_bytes_peak"] <= rep["memory_budget_bytes"]
        assert rep["peak_rss_bytes"] <= rep["rss_after_load_bytes"] + rep["memory_budget_bytes"] + RSS_OVERHEAD, rep


@pytest.mark.parametrize("backend", BACKENDS)
def test_peak_rss_within_backbone_plus_budget_plus_overhead(int4_artifact, tmp_path, backend):
    check_rss_bound(int4_artifact, backend, tmp_path)


def test_eviction_returns_memory_to_the_os(int4_artifact):
    from cosmoe_edge.runtime.footprint import measure

    for backend in BACKENDS:
        fp = measure(int4_artifact, backend)
        # loading every expert raises RSS; releasing them and trimming the heap gives it back
        assert fp["rss_loaded"] > 0
        assert fp["rss_after_malloc_trim"] < 0.25 * fp["rss_loaded"] + 256 * 1024, fp


def test_store_checks_sha256_again_when_a_file_changed_after_its_first_load(int4_artifact, tmp_path, monkeypatch):
    from cosmoe_edge.runtime import manifest, store

    art = tmp_path / "art"
    shutil.copytree(int4_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    entries = m["backends"]["executorch"]["experts"]
    hashed = []
    monkeypatch.setattr(manifest, "sha256_file", lambda p, f=manifest.sha256_file: hashed.append(p) or f(p))
    s = store.ExpertStore(art, "executorch", m["backends"]["executorch"], verify_sha=True, threads=1)
    s.load((0, 0)).release()
    s.load((0, 0)).release()
    assert len(hashed) == 1  # unchanged since its check: not hashed again
    p = art / entries[0]["path"]
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF  # same size: only the sha256 can tell
    p.write_bytes(bytes(b))
    with pytest.raises(ArtifactError, match="does not match its sha256") as e:
        s.load((0, 0))
    assert e.value.kind == "sha_mismatch"
