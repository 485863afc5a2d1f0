"""ONNX experts in the weights form (`--quant int8`): a miss maps the expert's safetensors file and runs it
through the shared slot graph; a hot expert is promoted to a prepacked session of its own with the same
kernels. Outputs must not depend on the budget, the policy or promotion; memory must stay bounded."""

import json
import shutil

import numpy as np
import pytest
import torch

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.export.expert_weights import quantize_columns
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.runtime.backends import import_runtime
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.manifest import backend_section, load_manifest
from cosmoe_edge.runtime.store import ExpertStore
from tests.test_runtime import PROMPT, check_rss_bound, edge_run, greedy_tokens


def store_of(artifact, verify=False):
    import_runtime("onnx")
    return ExpertStore(artifact, "onnx", backend_section(load_manifest(artifact), "onnx"), verify, threads=1)


def test_manifest_describes_the_weights_form(int8_onnx_artifact):
    s = backend_section(load_manifest(int8_onnx_artifact), "onnx")
    assert s["expert_form"] == "weights" and set(s["expert_graphs"]) == {"slot", "const"}
    assert s["promote_after"] >= 1 and "promoted_rss_per_file_byte" in s["footprint"]
    for e in s["experts"]:
        assert e["path"].endswith(".safetensors")
        assert e["bytes"] <= e["loaded_bytes"] <= e["resident_bytes"]  # mapped < prepacked copy


def test_expert_matches_the_eager_expert(int8_onnx_artifact, tiny_model):
    model, _, _ = load_model(tiny_model)
    store = store_of(int8_onnx_artifact)
    x = torch.randn(5, model.cfg.dim)
    for layer, expert in [(0, 0), (1, 3)]:
        want = model.layers[layer].ffn.experts[expert](x).detach().numpy()
        got = store.load((layer, expert)).run("forward", [x.numpy()])[0]
        # int8 weights per column and dynamically quantised uint8 activations: close, not equal
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), np.abs(got - want).max()


def test_promoted_expert_is_bit_identical_to_the_slot(int8_onnx_artifact):
    store = store_of(int8_onnx_artifact)
    rng = np.random.default_rng(0)
    for t in (1, 5, 32):
        x = rng.standard_normal((t, store.slot.session.get_inputs()[0].shape[1])).astype(np.float32)
        p = store.load((0, 1))
        slot = p.run("forward", [x])[0]
        assert p.promotable
        store.promote(p)
        assert not p.promotable
        np.testing.assert_array_equal(p.run("forward", [x])[0], slot)
        p.release()


def test_quantisation_is_symmetric_per_column():
    w = torch.randn(6, 4)  # nn.Linear weight (out, in)
    q, s = quantize_columns(w)
    assert q.shape == (4, 6) and s.shape == (6,) and q.dtype == np.int8 and np.abs(q).max() == 127
    np.testing.assert_allclose(q * s, w.t().numpy(), atol=s.max() / 2 + 1e-7)


def promoting_after(artifact, folder, uses):
    """A copy of the artifact whose experts are promoted after `uses` uses (None: never)."""
    shutil.copytree(artifact, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["backends"]["onnx"].pop("promote_after")
    if uses is not None:
        m["backends"]["onnx"]["promote_after"] = uses
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


@pytest.mark.parametrize("policy", ["nextuse", "lru"])
def test_any_budget_and_promotion_give_the_same_tokens(int8_onnx_artifact, tmp_path, policy):
    full, _ = greedy_tokens(promoting_after(int8_onnx_artifact, tmp_path / "never", None), "onnx", n=48)
    art = promoting_after(int8_onnx_artifact, tmp_path / "first", 1)
    engine = Engine(art, "onnx")
    for budget in (engine.min_budget, engine.expert_bytes_total // 4, engine.expert_bytes_total):
        events = []

        def check(kind, key, resident, budget=budget, events=events):
            events.append(kind)
            assert resident <= budget

        got, e = greedy_tokens(art, "onnx", n=48, budget_bytes=budget, policy=policy, on_cache_event=check)
        assert got == full, budget
        assert e.cache.peak_bytes <= budget
        if budget == engine.expert_bytes_total:
            assert "promote" in events and "evict" not in events  # room for all: every used expert promoted
        if budget == engine.min_budget:
            assert "evict" in events


@pytest.mark.parametrize("offset", [0, 9, None])
def test_corrupt_weights_file_without_checksums_is_one_line(int8_onnx_artifact, tmp_path, offset):
    art = tmp_path / "art"
    shutil.copytree(int8_onnx_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    p = art / m["backends"]["onnx"]["experts"][0]["path"]
    b = bytearray(p.read_bytes()) if offset is not None else bytearray(p.stat().st_size)
    if offset is not None:
        b[offset] ^= 0xFF  # the header's length, or its JSON
    p.write_bytes(bytes(b))
    r = edge_run(art, "--prompt", PROMPT, "--backend", "onnx", "--no-verify")
    assert r.returncode == 2 and "corrupt" in r.stderr, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_truncated_or_foreign_weights_file_is_refused(int8_onnx_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(int8_onnx_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    p = art / m["backends"]["onnx"]["experts"][0]["path"]
    p.write_bytes(p.read_bytes()[:-10])
    store = store_of(art)
    with pytest.raises(ArtifactError, match="truncated or replaced") as e:
        store.load((0, 0))
    assert e.value.kind == "size_mismatch"


def test_peak_rss_within_backbone_plus_budget_plus_overhead(int8_onnx_artifact, tmp_path):
    check_rss_bound(int8_onnx_artifact, "onnx", tmp_path)  # mapped pages count in RSS: the budget holds them


def test_released_experts_leave_rss(int8_onnx_artifact):
    from cosmoe_edge.runtime.footprint import measure

    fp = measure(int8_onnx_artifact, "onnx")
    # mapped pages count in RSS while loaded (about the file's bytes) and leave with the mapping
    assert fp["file_bytes"] <= fp["rss_loaded"] <= 1.5 * fp["file_bytes"] + 256 * 1024, fp
    # promoted (prepacked copies on the heap, the mapped pages dropped), then released and trimmed
    assert fp["rss_after_malloc_trim"] < 0.25 * max(fp["rss_promoted"], fp["rss_loaded"]) + 512 * 1024, fp
