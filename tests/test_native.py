"""The native core (native/, cosmoe_edge.h) against the Python engine, its reference: the same tokens and cache
decisions at every budget and policy on the shipped model (ExecuTorch programs, and ONNX programs at the end),
the conformance vectors replayed through the core, bad input in one line, no torch on its path, and a long run
that holds its memory and files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from cosmoe_edge.errors import ArtifactError, RequestError
from cosmoe_edge.runtime.backends import import_runtime
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate
from cosmoe_edge.runtime.manifest import lazy_bytes, load_manifest
from cosmoe_edge.runtime.native import NativeEngine, core
from cosmoe_edge.runtime.routing import softmax

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "conformance"
PROMPTS = ["The list type is", "def f(x):\n    return x +"]
native = core()


def vectors(name):
    return json.loads((VECTORS / name).read_text())


def total(artifact, backend="executorch") -> int:
    m = load_manifest(artifact)
    return lazy_bytes(m, m["backends"][backend])


def run_engine(cls, artifact, prompt_ids, tokens=40, backend="executorch", **kw):
    events = []
    e = cls(artifact, backend, on_cache_event=lambda kind, key, b: events.append((kind, *key, b)), **kw)
    try:
        out, _, logits = generate(e, prompt_ids, tokens, Sampler(), keep_logits=True)
    finally:
        e.close()
    c = e.cache
    return dict(tokens=out, logits=logits, counters=(c.hits, c.misses, c.evictions), events=events,
                switch=e.routing.switch_rate, counts=e.counts.as_dict())


@pytest.fixture(scope="module")
def shipped(shipped_executorch_artifact):
    import_runtime("executorch", 1)
    tok = Tokenizer.from_file(str(shipped_executorch_artifact / "tokenizer.json"))
    return shipped_executorch_artifact, [tok.encode(p).ids for p in PROMPTS]


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.125])
def test_tokens_and_cache_decisions_equal_the_python_engine(shipped, fraction):
    artifact, prompts = shipped
    budget = int(total(artifact) * fraction)
    for policy in ("nextuse", "lru", "lfu", "none") if fraction < 1 else ("nextuse",):
        for ids in prompts:
            py = run_engine(Engine, artifact, ids, budget_bytes=budget, policy=policy)
            nat = run_engine(NativeEngine, artifact, ids, budget_bytes=budget, policy=policy)
            label = f"{policy} at {fraction:.1%}"
            assert nat["tokens"] == py["tokens"], label
            assert nat["events"] == py["events"] and nat["counters"] == py["counters"], label
            assert nat["switch"] == py["switch"] and nat["counts"] == py["counts"], label
            # the same .pte files through the same XNNPACK kernels; measured within 6e-6
            np.testing.assert_allclose(nat["logits"], py["logits"], rtol=0, atol=1e-4)
            if fraction == 0.125 and policy != "none":
                assert py["counters"][2] > 0, label  # the budget bit: experts were evicted


@pytest.mark.parametrize("choice", [dict(on_miss="skip", skip_below=0.5), dict(cache_bias=1.0),
                                    dict(experts_per_token=1), dict(prefetch=True), dict(verify=False)])
def test_selection_choices_and_prefetch_equal_the_python_engine(shipped, choice):
    artifact, prompts = shipped
    budget = int(total(artifact) * 0.25)
    py = run_engine(Engine, artifact, prompts[0], budget_bytes=budget, **choice)
    nat = run_engine(NativeEngine, artifact, prompts[0], budget_bytes=budget, **choice)
    assert nat["tokens"] == py["tokens"], choice
    if not choice.get("prefetch"):  # a prefetch races the main thread in both engines: only its text is fixed
        assert nat["events"] == py["events"] and nat["counts"] == py["counts"], choice
    changed = {"skip_below": "misses_skipped", "cache_bias": "bias_changed"}
    for key, count in changed.items():
        if key in choice:
            assert nat["counts"][count] > 0, choice  # the choice acted on this run


def test_generation_vector_replays_through_the_core(shipped):
    g = vectors("generation.json")
    artifact, _ = shipped
    e = NativeEngine(artifact)
    out, _, _ = generate(e, g["prompt_ids"], len(g["generated_ids"]), Sampler())
    e.close()
    assert out == g["generated_ids"]


def test_cache_vectors_replay_through_the_core():
    c = vectors("cache.json")
    costs = [0] * (c["n_layers"] * c["num_experts"])
    for x in c["costs"]:
        costs[x["layer"] * c["num_experts"] + x["expert"]] = x["cost"]
    for run in c["runs"]:
        events = []
        d = native.Dispatch(costs, c["n_layers"], c["num_experts"], run["budget"], run["policy"],
                            lambda kind, layer, expert, b, events=events: events.append([kind, layer, expert, b]))
        for op, layer, expert, pinned in run["ops"]:
            getattr(d, op)(layer, expert, [v for p in pinned for v in p])
        s = d.stats()
        label = f"{run['policy']} at {run['budget']}"
        assert events == run["events"], label
        assert (s["hits"], s["misses"], s["evictions"], s["prefetch_useful"]) == (
            run["hits"], run["misses"], run["evictions"], run["prefetch_useful"]), label
        assert s["resident_bytes_peak"] <= run["budget"]


def test_selection_and_routing_vectors_replay_through_the_core():
    for i, c in enumerate(vectors("selection_cases.json")["cases"]):
        s = c["selection"]
        logits = np.asarray(c["logits"], dtype=np.float32)
        vec = None if c["vectors"] is None else np.asarray(c["vectors"], dtype=np.float32)
        st = c["sticky"]
        experts, weights, theta, counts, prev = native.select(
            logits, c["top_k"], c["renorm"], s["experts_per_token"], s["on_miss"], s["skip_below"], s["cache_bias"],
            vec, [int(r) for r in c["resident"]], st["delta"] if st else 0.0, st["prev_in"] if st else None)
        T = len(logits)
        assert np.reshape(experts, (T, -1)).tolist() == c["experts"], i
        assert {k: counts[k] for k in c["counts"]} == c["counts"], i
        assert not st or prev == st["prev_out"], i
        np.testing.assert_allclose(np.reshape(weights, (T, -1)), c["weights"], rtol=0, atol=1e-7)
        assert (theta is None) == (c["theta"] is None), i
        if theta is not None:
            np.testing.assert_allclose(np.reshape(theta, (T, -1)), c["theta"], rtol=0, atol=1e-6)
    g = vectors("generation.json")
    for case in g["route_cases"]:
        logits = np.asarray([case["logits"]], dtype=np.float32)
        if "cmoe" in case:
            bias, scale = (np.asarray(case["cmoe"][k], dtype=np.float32) for k in ("bias", "scale"))
            experts, weights = native.route_cmoe(logits, g["top_k"], bias, scale)
        else:
            experts, weights, _, _, _ = native.select(logits, g["top_k"], case.get("renorm", True), g["top_k"], "wait",
                                                      0.5, 0.0, None, None, 0.0, None)
        assert experts == case["experts"]
        np.testing.assert_allclose(weights, case["weights"], rtol=0, atol=1e-7)
    # the traced steps with the model's sticky rule, a state per layer fresh at position 0
    prev = [[0.0] * g["num_experts"] for _ in range(g["n_layers"])]
    for step in g["steps"]:
        if step["pos0"] == 0:
            prev[step["layer"]] = [0.0] * g["num_experts"]
        logits = np.asarray(step["router_logits"], dtype=np.float32)
        experts, _, _, _, prev[step["layer"]] = native.select(
            logits, g["top_k"], True, g["top_k"], "wait", 0.5, 0.0, None, None, g["sticky_delta"], prev[step["layer"]])
        assert np.reshape(experts, (len(logits), -1)).tolist() == step["experts"], (step["pos0"], step["layer"])


def test_rope_mask_and_header_vectors_replay_through_the_core(tmp_path):
    kv = vectors("kv_cases.json")
    for r in kv["rope"]:
        cos, sin = native.rope_row(r["head_dim"], r["theta"], r["pos"])
        assert np.asarray(cos, np.float32).view(np.uint32).tolist() == r["cos_bits"], r["pos"]
        assert np.asarray(sin, np.float32).view(np.uint32).tolist() == r["sin_bits"], r["pos"]
    for m in kv["masks"]:
        mask = np.reshape(native.attention_mask(m["pos0"], m["n"], m["rep"]), (len(m["rows"]), -1))
        assert ["".join("0" if v == 0 else "-" for v in row) for row in mask] == m["rows"]
    h = vectors("program_header_cases.json")
    path = tmp_path / h["file_name"]
    import base64

    for case in h["cases"]:
        path.write_bytes(base64.b64decode(case["bytes"]))
        try:
            native.check_pte_header(str(path))
            got = None
        except ArtifactError as e:
            got = e.kind
            assert str(e) == case["expected_message"], case["name"]
        assert got == case["expected_error"], case["name"]


def test_softmax_in_the_core_rounds_as_numpy():
    rng = np.random.default_rng(0)
    for E in (8, 16, 64):
        logits = rng.normal(size=(50, E)).astype(np.float32)
        experts, weights, _, _, _ = native.select(logits, E, False, E, "wait", 0.5, 0.0, None, None, 0.0, None)
        p = softmax(logits)
        ref = np.take_along_axis(p, np.asarray(experts).reshape(50, E), -1)
        assert np.abs(np.reshape(weights, (50, E)) - ref).max() <= 2 * np.finfo(np.float32).eps


@pytest.fixture
def damaged(shipped, tmp_path):
    artifact = tmp_path / "artifact"
    shutil.copytree(shipped[0], artifact)
    m = load_manifest(artifact)
    return artifact, artifact / m["backends"]["executorch"]["experts"][3]["path"]


def first_miss_fails(artifact, **kw):
    e = NativeEngine(artifact, **kw)
    try:
        with pytest.raises(ArtifactError) as info:
            e.preload()  # every expert through the miss path
        return info.value
    finally:
        e.close()


def test_damaged_expert_files_end_in_one_line(damaged):
    artifact, expert = damaged
    data = bytearray(expert.read_bytes())
    data[len(data) // 2] ^= 0x40  # a flipped bit
    expert.write_bytes(bytes(data))
    e = first_miss_fails(artifact)
    assert e.kind == "sha_mismatch" and "\n" not in str(e) and expert.name in str(e)
    header = bytearray(data)
    header[4:8] = b"XX12"  # header damaged, size kept: caught before ExecuTorch reads it
    expert.write_bytes(bytes(header))
    e = first_miss_fails(artifact, verify=False)
    assert e.kind == "corrupt_program" and "not ET12" in str(e)
    body = bytearray(data)
    body[64:4096] = bytes(4096 - 64)  # the flatbuffer zeroed, header intact: ExecuTorch's verification refuses it
    expert.write_bytes(bytes(body))
    e = first_miss_fails(artifact, verify=False)
    assert e.kind == "corrupt_program" and str(e).startswith(f"cannot load {expert.name}")
    expert.write_bytes(bytes(data[:1000]))  # truncated
    assert first_miss_fails(artifact).kind == "size_mismatch"
    expert.unlink()
    assert first_miss_fails(artifact).kind == "missing_file"


def test_damaged_backbone_and_bad_requests_end_in_one_line(damaged, shipped):
    artifact, _ = damaged
    layer = artifact / "executorch" / "backbone" / "layer_1.pte"
    layer.write_bytes(layer.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="layer_1.pte is .* bytes, the manifest says"):
        NativeEngine(artifact)
    with pytest.raises(RequestError, match="below the minimum"):
        NativeEngine(artifact, budget_bytes=10)
    e = NativeEngine(shipped[0])
    with pytest.raises(RequestError, match="sequence would exceed the model's 512 positions"):
        e.forward([1] * 513)
    e.close()


def test_edge_run_native_says_what_went_wrong_in_one_line(damaged):
    artifact, expert = damaged
    expert.write_bytes(expert.read_bytes()[:1000])
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.cli", str(artifact), "--prompt", "The list type is",
                        "--memory-budget", "12.5%", "--max-new-tokens", "32", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("edge-run: ") and "truncated or replaced" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.cli", str(artifact), "--prompt", "x",
                        "--engine", "native", "--backend", "onnx"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def run_host(artifact, ids, *args):
    from cosmoe_edge.runtime.native import host

    r = subprocess.run([str(host()), str(artifact), "--ids", ",".join(map(str, ids)), *args], capture_output=True,
                       text=True, timeout=120)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else r.stderr)


@pytest.mark.parametrize("fraction, policy", [(1.0, "nextuse"), (0.25, "nextuse"), (0.125, "lru")])
def test_host_without_python_gives_the_python_engine_tokens(shipped, fraction, policy):
    """edge-run-native reads the manifest itself (nlohmann/json) and must fill the core as native.py does."""
    artifact, prompts = shipped
    budget = int(total(artifact) * fraction)
    for ids in prompts:
        py = run_engine(Engine, artifact, ids, budget_bytes=budget, policy=policy)
        code, r = run_host(artifact, ids, "--max-new-tokens", "40", "--memory-budget", str(budget),
                           "--cache-policy", policy)
        assert code == 0, r
        assert r["ids"] == py["tokens"] and (r["expert_hits"], r["expert_misses"], r["expert_evictions"]) == py["counters"]
        assert r["engine"] == "native-host" and r["peak_rss_bytes"] > 0 and r["decode_tokens_per_s"] > 0
    code, sampled = run_host(artifact, prompts[0], "--max-new-tokens", "40", "--temperature", "1", "--seed", "3")
    assert code == 0 and len(sampled["ids"]) == 40 and sampled["ids"] != r["ids"]


def test_host_says_what_went_wrong_in_one_line(damaged, shipped, tmp_path):
    artifact, expert = damaged
    ids = shipped[1][0]
    expert.write_bytes(expert.read_bytes()[:1000])
    bad = tmp_path / "v1"
    bad.mkdir()
    m = json.loads((artifact / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps(m | {"format_version": 1}))
    for where, args, says in [(artifact, ["--memory-budget", "12.5%", "--preload"], "truncated or replaced"),
                              (shipped[0], ["--memory-budget", "10"], "below the minimum"),
                              (bad, [], "this runtime reads version 2"),
                              (tmp_path / "nowhere", [], "cannot read"),
                              (shipped[0], ["--cache-policy", "fifo"], "fifo"),
                              (shipped[0], ["--threads", "x"], "--threads takes a number")]:
        code, err = run_host(where, ids, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, (args, err)
        assert err.startswith("edge-run-native: ")
    code, err = run_host(shipped[0], [999999])
    assert code == 2 and "past the vocabulary" in err


def test_native_run_imports_no_torch_and_reports_its_engine(shipped, tmp_path):
    artifact, _ = shipped
    probe = ("import json, sys; from cosmoe_edge.runtime.run import run; from cosmoe_edge.runtime.options import "
             "RunOptions; r = run(sys.argv[1], RunOptions(prompt='The list type is', max_new_tokens=16, "
             "memory_budget='25%')); print(json.dumps([r['engine'], r['generated_tokens'], 'torch' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", probe, str(artifact)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["native", 16, False]


def test_long_run_holds_its_memory_and_files(shipped):
    """5,000 decode tokens at 12.5% (sequences of the model's length, each from a fresh reset): RSS after the first
    sequence may not drift by more than 1 MB, and the open file count stays what it was."""
    artifact, prompts = shipped
    e = NativeEngine(artifact, budget_bytes=int(total(artifact) * 0.125))

    def rss():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) * 1024

    def fds():
        return len(os.listdir("/proc/self/fd"))

    decoded, marks = 0, []
    while decoded < 5000:
        out, _, _ = generate(e, prompts[decoded // 500 % 2], 500, Sampler(temperature=0.8, seed=decoded))
        decoded += len(out) - 1
        marks.append((rss(), fds()))
    misses = e.cache.misses
    e.close()
    assert misses > 5000  # the budget bit all along
    base_rss, base_fds = marks[0]
    assert all(f == base_fds for _, f in marks), marks
    assert max(r for r, _ in marks) - base_rss <= 1 << 20, [r - base_rss for r, _ in marks]


def test_prepared_cache_gives_the_same_tokens_and_refuses_damage(shipped, tmp_path, monkeypatch):
    from cosmoe_edge.runtime import prepare

    artifact, prompts = shipped
    monkeypatch.setenv("COSMOE_EDGE_CACHE", str(tmp_path / "cache"))
    assert prepare.prepared_cache(artifact) is None and "edge-prepare" in prepare.status(artifact)[1]
    meta = prepare.prepare(artifact)
    packed = prepare.prepared_cache(artifact)
    assert packed is not None and packed.stat().st_size == meta["packed"]["bytes"] > 0
    budget = int(total(artifact) * 0.25)
    plain = run_engine(NativeEngine, artifact, prompts[0], budget_bytes=budget)
    cached = run_engine(NativeEngine, artifact, prompts[0], budget_bytes=budget, packed_cache=packed)
    assert cached["tokens"] == plain["tokens"] and cached["events"] == plain["events"]
    # --cold starts with the packed cache out of memory too, as a device's flash would hold it
    from cosmoe_edge.runtime.options import RunOptions
    from cosmoe_edge.runtime.run import cold_files

    m = load_manifest(artifact)
    assert packed in cold_files(artifact, m, RunOptions(prompt="x", cold=True))
    assert packed not in cold_files(artifact, m, RunOptions(prompt="x", cold=True, engine="python"))
    assert packed not in cold_files(artifact, m, RunOptions(prompt="x", cold=True, packed_cache=False))
    # another ExecuTorch build: not used, and said so
    meta_path = packed.parent / prepare.PREPARED
    good = meta_path.read_text()
    meta_path.write_text(good.replace(f'"executorch_version": "{meta["executorch_version"]}"',
                                      '"executorch_version": "0.0.1"'))
    path, line = prepare.status(artifact)
    assert path is None and "another ExecuTorch version" in line
    meta_path.write_text(good)
    data = bytearray(packed.read_bytes())
    data[len(data) // 3] ^= 1  # a flipped bit: the identity changed, so its sha256 is checked, and fails
    packed.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256: corrupt; run `edge-prepare"):
        prepare.prepared_cache(artifact)
    packed.write_bytes(bytes(data[:100]))
    with pytest.raises(ArtifactError, match="missing or truncated"):
        prepare.prepared_cache(artifact)
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.cli", str(artifact), "--prompt", "x",
                        "--max-new-tokens", "2", "--quiet"], capture_output=True, text=True, timeout=120,
                       env=os.environ | {"COSMOE_EDGE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"edge-run: error: the prepared cache {packed} is missing or truncated; run `edge-prepare {artifact}` once on "
        "this device again"], r.stderr
    shutil.rmtree(packed.parent)
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.cli", str(artifact), "--prompt", "x",
                        "--max-new-tokens", "2", "--quiet"], capture_output=True, text=True, timeout=120,
                       env=os.environ | {"COSMOE_EDGE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0 and "no prepared cache for this artifact" in r.stderr, r.stderr


def test_prepared_cache_reads_packed_bytes_only_and_drops_evicted_pages(shipped, tmp_path, monkeypatch):
    """With the packed cache a miss reads the expert's packed bytes, not its program's weights too (the core reads
    the program's own bytes exactly, so no read-around pulls the file in); --evicted-pages drop unmaps an evicted
    expert's pages and lets the page cache go of them, so memory as the OS sees it follows the budget."""
    from cosmoe_edge.runtime import prepare
    from cosmoe_edge.runtime.manifest import artifact_files
    from cosmoe_edge.runtime.metrics import drop_page_cache

    artifact, prompts = shipped
    monkeypatch.setenv("COSMOE_EDGE_CACHE", str(tmp_path / "cache"))
    prepare.prepare(artifact)
    packed = prepare.prepared_cache(artifact)
    m = load_manifest(artifact)
    section = m["backends"]["executorch"]
    expert_pte = sum(e["bytes"] for e in section["experts"])
    backbone = sum(f["bytes"] for f in section["backbone"]["files"])
    drop_page_cache(artifact_files(artifact, m) + [packed])
    code, r = run_host(artifact, prompts[0], "--max-new-tokens", "8", "--no-verify", "--preload",
                       "--packed-cache", str(packed))
    assert code == 0, r
    # every expert loaded cold: its packed bytes, the backbone and the embedding, and of the experts' programs only
    # their headers and scales (their weights read too would add the whole of expert_pte)
    assert r["storage_read_bytes"] <= packed.stat().st_size + backbone + m["embedding"]["bytes"] + expert_pte // 2, r
    runs = {}
    for mode in ("keep", "drop", "auto"):
        code, runs[mode] = run_host(artifact, prompts[0], "--max-new-tokens", "40", "--memory-budget", "12.5%",
                                    "--packed-cache", str(packed), "--evicted-pages", mode)
        assert code == 0, runs[mode]
    keep, drop, auto = runs["keep"], runs["drop"], runs["auto"]
    assert keep["ids"] == drop["ids"] == auto["ids"] and keep["expert_misses"] == drop["expert_misses"]
    assert (keep["evicted_pages"], drop["evicted_pages"], auto["evicted_pages"]) == ("keep", "drop", "keep")
    assert drop["peak_rss_bytes"] <= keep["peak_rss_bytes"] - 512 * 1024, (drop, keep)  # measured: 1.4 MB apart
    code, err = run_host(artifact, prompts[0], "--evicted-pages", "sometimes")
    assert code == 2 and "--evicted-pages takes auto, keep or drop" in err


def test_side_by_side_measures_the_host_as_it_does_llama_cpp(shipped):
    from cosmoe_edge.bench.side_by_side import Run, run_cosmoe

    artifact, _ = shipped
    r = run_cosmoe(artifact, Run("cosmoe-edge", "executorch", "int4", 1, "lazy", runtime="host"), "The list type is",
                   24, 0.0)
    assert r["generated_tokens"] == 24 and r["decode_tokens_per_s"] > 0, r
    assert 0 < r["peak_rss_bytes"] < 200e6 and r["storage_read_bytes"] >= 0


# ---- the ONNX backend: the same core on onnxruntime's C API, against the Python ONNX engine ----

@pytest.fixture(scope="module")
def shipped_onnx(shipped_onnx_artifact):
    import_runtime("onnx", 1)
    tok = Tokenizer.from_file(str(shipped_onnx_artifact / "tokenizer.json"))
    return shipped_onnx_artifact, [tok.encode(p).ids for p in PROMPTS]


@pytest.mark.parametrize("fraction", [1.0, 0.25, 0.125])
def test_onnx_tokens_and_cache_decisions_equal_the_python_onnx_engine(shipped_onnx, fraction):
    artifact, prompts = shipped_onnx
    budget = int(total(artifact, "onnx") * fraction)
    for policy in ("nextuse", "lru", "lfu") if fraction < 1 else ("nextuse",):
        for ids in prompts:
            py = run_engine(Engine, artifact, ids, backend="onnx", budget_bytes=budget, policy=policy)
            nat = run_engine(NativeEngine, artifact, ids, backend="onnx", budget_bytes=budget, policy=policy)
            label = f"{policy} at {fraction:.1%}"
            assert nat["tokens"] == py["tokens"], label
            assert nat["events"] == py["events"] and nat["counters"] == py["counters"], label
            # the same .onnx files and session options, but onnxruntime's C library, not its Python module's own
            # copy: most rows within 5e-6, the largest seen 3.3e-4 (the same tokens and experts)
            np.testing.assert_allclose(nat["logits"], py["logits"], rtol=0, atol=1e-3)
            if fraction == 0.125:
                assert py["counters"][2] > 0, label  # the budget bit: experts were evicted


def test_onnx_host_gives_the_python_onnx_engine_tokens_and_refuses_bad_input(shipped_onnx, tmp_path):
    artifact, prompts = shipped_onnx
    budget = int(total(artifact, "onnx") * 0.25)
    py = run_engine(Engine, artifact, prompts[1], backend="onnx", budget_bytes=budget, policy="lru")
    code, r = run_host(artifact, prompts[1], "--backend", "onnx", "--max-new-tokens", "40", "--memory-budget",
                       str(budget), "--cache-policy", "lru")
    assert code == 0, r
    assert r["ids"] == py["tokens"] and (r["expert_hits"], r["expert_misses"], r["expert_evictions"]) == py["counters"]
    assert r["backend"] == "onnx"
    for args, says in [(["--backend", "onnx", "--packed-cache", "x.bin"], "ONNX programs take none"),
                       (["--backend", "tflite"], "--backend takes executorch or onnx"),
                       ([], "no executorch programs")]:
        code, err = run_host(artifact, prompts[0], *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, (args, err)


def test_onnx_damaged_programs_end_in_one_line(shipped_onnx, tmp_path):
    artifact = tmp_path / "artifact"
    shutil.copytree(shipped_onnx[0], artifact)
    m = load_manifest(artifact)
    expert = artifact / m["backends"]["onnx"]["experts"][3]["path"]
    data = expert.read_bytes()
    expert.write_bytes(bytes(len(data)))  # zeroed, size kept: onnxruntime's parser refuses it
    e = NativeEngine(artifact, "onnx", verify=False)
    with pytest.raises(ArtifactError) as info:
        e.preload()
    e.close()
    assert info.value.kind == "corrupt_program" and "\n" not in str(info.value)
    assert str(info.value).startswith(f"cannot load {expert.name}: corrupt or truncated ONNX program")
    e = NativeEngine(artifact, "onnx")  # with sha256 checks, the same file is refused before onnxruntime sees it
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        e.preload()
    e.close()
    expert.write_bytes(data[:1000])
    with pytest.raises(ArtifactError, match="truncated or replaced"):
        NativeEngine(artifact, "onnx").preload()
    with pytest.raises(RequestError, match="ONNX programs take none"):
        NativeEngine(artifact, "onnx", packed_cache=tmp_path / "x.bin")
    probe = ("import json, sys; from cosmoe_edge.runtime.run import run; from cosmoe_edge.runtime.options import "
             "RunOptions; r = run(sys.argv[1], RunOptions(prompt='The list type is', max_new_tokens=8, backend='onnx', "
             "engine='native')); print(json.dumps([r['engine'], r['generated_tokens'], 'torch' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", probe, str(shipped_onnx[0])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["native", 8, False]
