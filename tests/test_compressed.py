"""Compressed experts (model, fine-tune, export, runtime) and the runtime's expert-selection choices:
--experts-per-token, --on-miss, --skip-below, --cache-bias, and edge-eval."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosmoe_edge.errors import RequestError
from cosmoe_edge.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from cosmoe_edge.model.model import MoE
from cosmoe_edge.model.train import init_from_checkpoint
from cosmoe_edge.runtime import selection as sel
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.options import RunOptions
from cosmoe_edge.runtime.perplexity import evaluate
from tests.conftest import _export, tiny_config


@pytest.fixture(scope="module")
def ce_model(tmp_path_factory, tiny_model):
    """The tiny model with compressed experts (k_main 1 of top-2) whose vectors are not ones."""
    start = init_from_checkpoint(tiny_model, {"k_main": 1})
    model = start["model"]
    with torch.no_grad():
        for layer in model.layers:
            layer.ffn.compressed.add_(0.3 * torch.randn_like(layer.ffn.compressed))
    path = tmp_path_factory.mktemp("ce") / "ce.pt"
    save_checkpoint(path, model, start["tokenizer"], start["meta"])
    return path


@pytest.fixture(scope="module")
def ce_artifact(tmp_path_factory, ce_model):
    return _export(tmp_path_factory, ce_model, "fp32")


def test_compressed_forward_equals_a_hand_computed_reference():
    torch.manual_seed(1)
    moe = MoE(tiny_config(k_main=1, top_k=3)).eval()
    with torch.no_grad():
        moe.compressed.copy_(1 + 0.5 * torch.randn_like(moe.compressed))
        x = torch.randn(1, 5, moe.compressed.shape[1])
        out, routing = moe(x)
        for t in range(5):
            p = (moe.router.weight @ x[0, t]).softmax(-1)
            order = [int(i) for i in p.argsort(descending=True)[:3]]
            main, aux = order[0], order[1:]
            a = p[aux] / p[aux].sum()
            theta = a[0] * moe.compressed[aux[0]] + a[1] * moe.compressed[aux[1]]
            want = moe.experts[main](x[0, t] * theta)  # one main expert: weight p/p = 1
            assert torch.allclose(out[0, t], want, atol=1e-6)
            assert routing.experts[0, t].tolist() == [main]


def test_vectors_at_ones_reproduce_the_plain_moe():
    torch.manual_seed(2)
    x = torch.randn(2, 7, 64)
    plain = MoE(tiny_config()).eval()
    for k_main, top_k in ((2, 2), (1, 1)):  # k_main = top_k: the same MoE; ones with k_main 1: plain top-1
        ce = MoE(tiny_config(k_main=k_main)).eval()
        ce.load_state_dict(plain.state_dict() | {"compressed": ce.compressed}, strict=True)
        ref = MoE(tiny_config(top_k=top_k)).eval()
        ref.load_state_dict(plain.state_dict())
        with torch.no_grad():
            assert torch.equal(ce(x)[0], ref(x)[0])


def test_config_refuses_k_main_outside_the_top_k():
    with pytest.raises(ValueError, match="k_main"):
        tiny_config(k_main=3)
    with pytest.raises(ValueError, match="k_main"):
        tiny_config(k_main=1, router_kind="cmoe")


def test_init_from_trains_only_the_vectors(tmp_path, tiny_model, small_corpus):
    out = tmp_path / "ce.pt"
    cmd = [sys.executable, "-m", "cosmoe_edge.model.train", "--init-from", str(tiny_model), "--k-main", "1",
           "--out", str(out), "--corpus", str(small_corpus), "--steps", "3", "--batch-size", "2", "--seq-len",
           "32", "--warmup", "1", "--lr", "0.05", "--eval-windows", "2", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    before, after = load_checkpoint(tiny_model), load_checkpoint(out)
    assert after["config"]["k_main"] == 1 and after["meta"]["trained"] == "vectors"
    assert after["tokenizer"] == before["tokenizer"]
    for name, t in after["state_dict"].items():
        if ".ffn.compressed" in name:
            assert not torch.equal(t, torch.ones_like(t)), name
        else:
            assert torch.equal(t, before["state_dict"][name]), name
    bad = subprocess.run(cmd[:-1] + ["--dim", "32"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "edge-train: error: --init-from takes the model's shape from its checkpoint; drop --dim"


def eager_logits(model_path, ids):
    model, _, _ = load_model(model_path)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].numpy()


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_exported_compressed_experts_match_the_eager_model(ce_model, ce_artifact, backend):
    ids = list(range(3, 40))
    want = eager_logits(ce_model, ids)
    engine = Engine(ce_artifact, backend)
    try:
        got = np.concatenate([engine.forward(ids[:20], all_logits=True)] +
                             [engine.forward([i]) for i in ids[20:]])  # prefill, then decode steps
    finally:
        engine.close()
    assert engine.selection.experts_per_token == 1 and engine.counts.compressed > 0
    assert np.abs(got - want).max() < 1e-3


def test_manifest_names_the_vectors_with_their_sha(ce_artifact):
    import json

    from cosmoe_edge.runtime.manifest import sha256_file

    m = json.loads((ce_artifact / "manifest.json").read_text())
    e = m["compressed_experts"]
    assert e["k_main"] == 1 and sha256_file(ce_artifact / e["path"]) == e["sha256"]


def logits_of(artifact, ids, **kw):
    engine = Engine(artifact, "onnx", **kw)
    try:
        return np.stack([engine.forward([i])[0] for i in ids]), engine
    finally:
        engine.close()


def test_miss_policies_change_nothing_when_everything_is_resident(ce_artifact, fp32_artifact):
    ids = list(range(5, 30))
    for artifact, policies in ((ce_artifact, [dict(on_miss="compressed"), dict(on_miss="skip", skip_below=1.0)]),
                               (fp32_artifact, [dict(on_miss="skip", skip_below=1.0), dict(cache_bias=3.0)])):
        base, _ = logits_of(artifact, ids)
        for kw in policies:
            e = Engine(artifact, "onnx", **kw)
            e.preload()
            try:
                got = np.stack([e.forward([i])[0] for i in ids])
            finally:
                e.close()
            assert np.array_equal(got, base), kw
            c = e.counts
            assert c.misses_compressed == c.misses_skipped == c.bias_changed == 0, kw


def replay(logits, resident, top_k, s: sel.Selection, has_vectors: bool) -> dict:
    """The selection rules written out token by token: the reference the engine's counts must match."""
    def order(v):  # the top-k by value, ties to the lower id
        return sorted(range(len(v)), key=lambda i: (-v[i], i))[:top_k]

    counts = dict(experts_run=0, compressed=0, misses_compressed=0, misses_skipped=0, bias_changed=0)
    for z, res in zip(logits, resident, strict=True):
        chosen = order(z + s.cache_bias * res)
        counts["bias_changed"] += set(chosen) != set(order(z))
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        main, aux = chosen[:s.experts_per_token], chosen[s.experts_per_token:] if has_vectors else []
        wsum = sum(p[e] for e in main)
        runs = []
        for rank, e in enumerate(main):
            if rank == 0 or res[e] or s.on_miss == "wait":
                runs.append(e)
            elif s.on_miss == "compressed":
                aux = aux + [e]
                counts["misses_compressed"] += 1
            elif p[e] / wsum < s.skip_below:
                counts["misses_skipped"] += 1
            else:
                runs.append(e)
        counts["experts_run"] += len(runs)
        counts["compressed"] += len(aux)
    return counts


@pytest.mark.parametrize("choice", [dict(experts_per_token=2, on_miss="compressed"),
                                    dict(experts_per_token=2, on_miss="skip", skip_below=0.45), dict(cache_bias=1.0),
                                    dict(experts_per_token=2, on_miss="compressed", cache_bias=0.5)])
def test_counts_under_a_budget_match_a_replay(ce_artifact, monkeypatch, choice):
    seen = []
    real = sel.select

    def spy(logits, top_k, renorm, s, vectors, resident, counts, sticky=None):
        seen.append((logits.copy(), np.repeat(resident[None], len(logits), 0), top_k))
        return real(logits, top_k, renorm, s, vectors, resident, counts, sticky)

    monkeypatch.setattr("cosmoe_edge.runtime.engine.select", spy)
    engine = Engine(ce_artifact, "onnx", budget_bytes=None, **choice)
    budget = engine.expert_bytes_total // 2  # half of the experts: selections miss, and bias has a choice
    engine.close()
    seen.clear()
    engine = Engine(ce_artifact, "onnx", budget_bytes=budget, **choice)
    try:
        for i in range(3, 40):
            engine.forward([i])
    finally:
        engine.close()
    logits = np.concatenate([s[0] for s in seen])
    resident = np.concatenate([s[1] for s in seen])
    want = replay(logits, resident, seen[0][2], engine.selection, has_vectors=True)
    assert engine.counts.as_dict() == want
    assert want["misses_compressed"] + want["misses_skipped"] + want["bias_changed"] > 0  # the budget did bite


def test_choices_that_cannot_be_served_fail_in_one_line(fp32_artifact, ce_artifact):
    cases = [(fp32_artifact, ["--experts-per-token", "0"], "--experts-per-token must be at least 1, not 0"),
             (fp32_artifact, ["--experts-per-token", "3"], "between 1 and the model's top-k (2), not 3"),
             (fp32_artifact, ["--on-miss", "compressed"], "--on-miss compressed needs compressed experts"),
             (ce_artifact, ["--skip-below", "-1"], "--skip-below and --cache-bias must be >= 0"),
             (ce_artifact, ["--on-miss", "later"], "unknown --on-miss 'later'")]
    for artifact, args, msg in cases:
        for tool in ("cosmoe_edge.runtime.cli", "cosmoe_edge.runtime.eval_cli"):
            prompt = ["--prompt", "hi"] if tool.endswith(".cli") else []
            r = subprocess.run([sys.executable, "-m", tool, str(artifact), "--backend", "onnx", *prompt, *args],
                               capture_output=True, text=True)
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (tool, args, r.stderr)
            assert msg in r.stderr, (tool, args, r.stderr)


def test_experts_per_token_without_vectors_is_plain_top_k(fp32_artifact, tiny_model):
    ids = list(range(3, 30))
    got, engine = logits_of(fp32_artifact, ids, experts_per_token=1)
    assert engine.counts.compressed == 0 and engine.counts.experts_run == len(ids) * engine.n_layers
    ckpt = load_checkpoint(tiny_model)
    model, _, _ = load_model(tiny_model)
    top1 = type(model)(type(model.cfg).from_dict(ckpt["config"] | {"top_k": 1}))
    top1.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        want = top1.eval()(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(got - want).max() < 1e-3


def test_edge_eval_matches_the_eager_perplexity(fp32_artifact, tiny_model):
    result = evaluate(fp32_artifact, RunOptions(prompt="-", backend="onnx"), None, window=64, max_tokens=200)
    ids = __import__("tokenizers").Tokenizer.from_str(load_checkpoint(tiny_model)["tokenizer"]).encode(
        load_checkpoint(tiny_model)["meta"]["val_text"]).ids
    model, _, _ = load_model(tiny_model)
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, 64):
            w = torch.tensor([ids[i:i + 64][:200 - n + 1]])
            logits = model(w[:, :-1])[0][0]
            nll += F.cross_entropy(logits, w[0, 1:], reduction="sum").item()
            n += w.shape[1] - 1
            if n >= 200:
                break
    assert result["tokens_scored"] == n == 200
    assert abs(result["perplexity"] / math.exp(nll / n) - 1) < 0.005
    assert result["misses_per_token"] >= 0 and result["selection"]["on_miss"] == "wait"


def test_selection_refuses_a_cmoe_router_for_its_choices():
    with pytest.raises(RequestError, match="CMoE"):
        sel.resolve({"top_k": 2}, False, 1, "wait", 0.5, 0.0, cmoe=True)
