"""edge-carve (CMoE): a dense model's FFN neurons regrouped into experts, exactly, with a training-free router
that the export and both runtimes follow."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cosmoe_edge.errors import CheckpointError, RequestError
from cosmoe_edge.model.carve import carve
from cosmoe_edge.model.checkpoint import load_model, save_checkpoint
from cosmoe_edge.model.model import CMoERouter, CoSMoE, route_cmoe
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cosmoe_edge.model.carve_cli"]


def dense_model(**kw) -> CoSMoE:
    torch.manual_seed(0)
    return CoSMoE(tiny_config(ffn="dense", dense_hidden=96, **kw)).eval()


@torch.no_grad()
def test_carving_regroups_every_neuron_once_and_all_experts_give_the_dense_ffn():
    dense = dense_model()
    carved = copy.deepcopy(dense)
    cfg, facts = carve(carved, torch.randint(0, 512, (4, 64)), experts=4, shared=1, active=1)
    assert (cfg.num_experts, cfg.top_k, cfg.expert_hidden, cfg.shared_expert_hidden) == (3, 1, 24, 24)
    assert len(facts) == cfg.n_layers
    for d, c in zip(dense.layers, carved.layers, strict=True):
        rows = [tuple(r.tolist()) for r in d.ffn.w1.weight]
        parts = [c.ffn.shared, *c.ffn.experts]
        assert all(p.w1.weight.shape[0] == 24 for p in parts)  # exactly m neurons each
        where = [rows.index(tuple(r.tolist())) for p in parts for r in p.w1.weight]
        assert sorted(where) == list(range(96))  # every neuron in exactly one expert
        for p in parts:  # a neuron keeps its own up row and down column
            ids = [rows.index(tuple(r.tolist())) for r in p.w1.weight]
            assert torch.equal(p.w3.weight, d.ffn.w3.weight[ids]) and torch.equal(p.w2.weight, d.ffn.w2.weight[:, ids])
        c.ffn.top_k = cfg.num_experts  # every routed expert, each with weight 1 (weight_scale is 0)
    x = torch.randint(0, 512, (2, 40))
    assert (carved(x)[0] - dense(x)[0]).abs().max().item() <= 1e-5


def test_light_finetune_trains_the_routers_and_balances():
    from cosmoe_edge.model.carve import finetune

    model = dense_model()
    with torch.no_grad():
        carve(model, torch.randint(0, 512, (4, 64)), experts=4, shared=1, active=1)
    frozen = {n: p.clone() for n, p in model.named_parameters() if "experts" in n or "attn." in n}
    facts = finetune(model, torch.randint(0, 512, (4096,), dtype=torch.int32), minutes=5, lr=1e-2, seq_len=64,
                     max_steps=4)
    assert facts["steps"] == 4 and facts["tokens"] == 4 * 4 * 64
    for layer in model.layers:
        assert layer.ffn.router.weight_scale.abs().max() > 0  # trained
        # the balance bias moved by whole steps of gamma, at most one per step
        assert layer.ffn.router.selection_bias.abs().max() <= 4 * 1e-3 + 1e-9
        assert layer.ffn.router.selection_bias.abs().max() > 0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_lora_finetune_moves_the_experts_and_merges_into_a_plain_model(tmp_path):
    from cosmoe_edge.model.carve import finetune

    model = dense_model()
    with torch.no_grad():
        carve(model, torch.randint(0, 512, (4, 64)), experts=4, shared=1, active=1)
    before = {n: p.clone() for n, p in model.named_parameters()}
    facts = finetune(model, torch.randint(0, 512, (4096,), dtype=torch.int32), minutes=5, lr=1e-2, seq_len=64,
                     max_steps=3, lora_rank=4)
    assert facts["lora_rank"] == 4 and facts["lora_layers"] == model.cfg.n_layers * (4 + 3 * (3 + 1))
    assert set(dict(model.named_parameters())) == set(before)  # adapters merged away, nothing renamed
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith(("wq", "w1", "w2")))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".experts.0.w1" in n for n in moved) and any(".attn.wq" in n for n in moved)
    assert "tok_emb.weight" not in moved
    save_checkpoint(tmp_path / "m.pt", model, None, {})  # an ordinary checkpoint again
    assert set(torch.load(tmp_path / "m.pt", weights_only=False)["state_dict"]) == set(model.state_dict())


def test_a_dense_model_fine_tunes_the_same_way_as_the_reference():
    from cosmoe_edge.model.carve import finetune

    model = dense_model()
    before = model.layers[0].ffn.w1.weight.clone()
    facts = finetune(model, torch.randint(0, 512, (4096,), dtype=torch.int32), minutes=5, lr=1e-2, seq_len=64,
                     max_steps=2, lora_rank=2)
    assert facts["steps"] == 2 and facts["lora_layers"] == model.cfg.n_layers * 7
    assert not torch.equal(model.layers[0].ffn.w1.weight, before)


@torch.no_grad()
def test_merged_lora_computes_what_the_adapters_did():
    from cosmoe_edge.model.carve import add_lora, merge_lora

    model = dense_model()
    carve(model, torch.randint(0, 512, (4, 64)), experts=4, shared=1, active=1)
    add_lora(model, 4)
    gen = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero, which would make the check vacuous
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    x = torch.randint(0, 512, (2, 24))
    with_adapters = model(x)[0]
    merge_lora(model)
    assert (model(x)[0] - with_adapters).abs().max().item() <= 1e-4


@torch.no_grad()
def test_router_score_and_routing_by_hand():
    router = CMoERouter(2, 3)
    router.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    router.gate.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, -0.6]]))
    x = torch.tensor([[2.0, -1.0]])
    # |(c . x) * silu(g . x)|: expert 0: |2 * silu(-1)|, expert 1: |-1 * silu(2)|, expert 2: |0.4 * silu(2.2)|
    want = torch.tensor([[abs(2 * F.silu(torch.tensor(-1.0)).item()), abs(-F.silu(torch.tensor(2.0)).item()),
                          abs(0.4 * F.silu(torch.tensor(2.2)).item())]])
    assert torch.allclose(router(x), want)
    probs, experts, weights = route_cmoe(want, 1, torch.zeros(3), torch.zeros(3))
    assert experts.tolist() == [[1]] and weights.tolist() == [[1.0]]  # silu(2) * 1 is the largest score
    probs, experts, weights = route_cmoe(want, 1, torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 0.5]))
    assert experts.tolist() == [[2]]  # the selection bias decides ...
    assert torch.allclose(weights, 1 + 0.5 * probs[:, 2:])  # ... the weight stays 1 + scale * p


def test_carved_model_exports_and_runs_as_its_eager_form(tmp_path, tiny_model):
    tokenizer_json = torch.load(tiny_model, weights_only=True)["tokenizer"]
    save_checkpoint(tmp_path / "dense.pt", dense_model(), tokenizer_json, {})
    r = subprocess.run([*CLI, tmp_path / "dense.pt", "--experts", "4", "--shared", "1", "--active", "2",
                        "--calib-tokens", "512", "--finetune-minutes", "0.02", "--out", tmp_path / "tuned.pt"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model, _, ckpt = load_model(tmp_path / "tuned.pt")
    assert model.cfg.router_kind == "cmoe" and ckpt["meta"]["carve"]["active_ffn_share"] == 0.75
    assert ckpt["meta"]["finetune"]["steps"] > 0
    # a wall-time fine-tune differs run to run: the export check uses fixed, clearly non-zero biases and
    # scales (as a fine-tune leaves them), so both runtimes must apply both
    gen = torch.Generator().manual_seed(1)
    routers = [layer.ffn.router for layer in model.layers]
    with torch.no_grad():
        for router in routers:
            router.weight_scale.copy_(torch.randn(3, generator=gen))
            router.selection_bias.copy_(0.2 * torch.randn(3, generator=gen))
    save_checkpoint(tmp_path / "carved.pt", model, tokenizer_json, ckpt["meta"])
    # fp32: the runtime's greedy tokens identical to the eager carved model's, logits within 1e-3
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.export.cli", tmp_path / "carved.pt", "--quant", "fp32",
                        "--out", tmp_path / "art"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert m["routing"]["kind"] == "cmoe" and "routers" not in m
    assert m["routing"]["weight_scale"][0] == routers[0].weight_scale.tolist()
    assert all(m["verification"][b]["passed"] for b in ("executorch", "onnx")), m["verification"]


def test_refusals_are_one_clear_line(tmp_path, tiny_model):
    cfg_dense = dense_model().cfg
    for args, message in (((5, 0, 1), "--experts 5 must be >= 2 and divide the FFN width 96"),
                          ((4, 4, 1), "--shared 4 must be in 0..3"), ((4, 1, 4), "--active 4 must be in 1..3")):
        with pytest.raises(RequestError, match=message):
            carve(CoSMoE(cfg_dense), torch.zeros(1, 8, dtype=torch.long), *args)
    with pytest.raises(CheckpointError, match="already an MoE"):
        carve(CoSMoE(tiny_config()), torch.zeros(1, 8, dtype=torch.long), 4, 1, 1)
    (tmp_path / "taken.pt").write_bytes(b"x")
    for args, message in (((tiny_model,), "already an MoE"), ((tiny_model, "--experts", "5"), "already an MoE"),
                          ((tmp_path / "none.pt",), "not found"),
                          ((tiny_model, "--out", tmp_path / "taken.pt"), "pass --force")):
        r = subprocess.run([*CLI, *map(str, args), *(() if "--out" in args else ("--out", tmp_path / "o.pt"))],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert not (tmp_path / "o.pt").exists()
