"""PEER (model/peer.py): product-key retrieval is exact, the layer equals a per-expert reference, configs are
checked, and a mixed model trains."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.model import PEER, CoSMoE, ffn_macs, param_summary
from cosmoe_edge.model.peer import product_key_topk, usage
from cosmoe_edge.model.train import TrainOptions, make_optimizer, run
from tests.conftest import tiny_config


def all_keys(sub_keys):
    """Every product key [c_i; c'_j] written out, row i * n + j."""
    n, half = sub_keys.shape[1], sub_keys.shape[2]
    keys = torch.cat([sub_keys[0].repeat_interleave(n, 0), sub_keys[1].repeat(n, 1)], dim=1)
    assert keys.shape == (n * n, 2 * half)
    return keys


def brute_force_topk(q, sub_keys, k):
    return (q @ all_keys(sub_keys).t()).topk(k, dim=-1)


@pytest.mark.parametrize("n,key_dim,k,lead", [(4, 2, 1, (7,)), (8, 16, 8, (5, 3)), (16, 8, 4, (40,)),
                                              (32, 32, 16, (2, 4, 3))])
def test_product_keys_find_the_exact_top_k(n, key_dim, k, lead):
    g = torch.Generator().manual_seed(n + k)
    sub_keys = torch.randn(2, n, key_dim // 2, generator=g, dtype=torch.float64)
    q = torch.randn(*lead, key_dim, generator=g, dtype=torch.float64)
    scores, ids = product_key_topk(q, sub_keys, k)
    want_scores, want_ids = brute_force_topk(q, sub_keys, k)
    assert ids.shape == (*lead, k)
    assert torch.equal(ids, want_ids)  # random scores: no ties, one order
    assert torch.allclose(scores, want_scores, atol=1e-12)


def naive_peer(layer: PEER, x):
    """Per token, per head: score all N keys, softmax over the k best, sum sigma(u_i . x) v_i."""
    keys = all_keys(layer.sub_keys)
    q = layer.query(x)
    if layer.query_norm is not None:
        bn = layer.query_norm
        q = (q - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for h in range(layer.heads):
            s = keys @ q[t, h * layer.key_dim:(h + 1) * layer.key_dim]
            top = s.topk(layer.top_k).indices
            g = s[top].softmax(0)
            for w, i in zip(g, top, strict=True):
                out[t] += w * layer.act(layer.w_in.weight[i] @ x[t]) * layer.w_out.weight[i]
    return out


@pytest.mark.parametrize("query_norm,activation", [(True, "gelu"), (False, "relu")])
def test_peer_layer_equals_a_per_expert_reference(query_norm, activation):
    layer = PEER(dim=12, num_experts=36, heads=3, top_k=4, key_dim=6, query_norm=query_norm,
                 activation=activation).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
        if query_norm:
            layer.query_norm.running_mean.normal_()
            layer.query_norm.running_var.uniform_(0.5, 2.0)
    layer.eval()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    out, routing = layer(x)
    assert routing is None and layer.last_ids.shape == (2, 5, 3, 4)
    assert torch.allclose(out.view(10, 12), naive_peer(layer, x.view(10, 12)), atol=1e-10)


def test_usage_is_share_used_and_kl_from_uniform():
    u = usage(torch.tensor([0, 0, 1, 1]), 4)
    assert u["used"] == 0.5 and math.isclose(u["kl_uniform"], math.log(2))
    assert usage(torch.arange(8), 8) == {"used": 1.0, "kl_uniform": 0.0}


@pytest.mark.parametrize("kw,message", [
    (dict(ffn="peer", peer_experts=1000), "perfect square"),
    (dict(ffn="peer", peer_key_dim=7), "must be even"),
    (dict(ffn="peer", peer_experts=64, peer_topk=9), "1..sqrt(peer_experts) (8)"),
    (dict(ffn="moe,peer,dense"), "one of them per layer (2"),  # tiny has 2 layers
    (dict(ffn="moe,pear"), "ffn must be one of moe, dense, peer"),
    (dict(ffn="peer", sticky_delta=1.0), "needs an MoE"),
])
def test_bad_peer_configs_are_one_clear_line(kw, message):
    with pytest.raises(ValueError) as e:
        tiny_config(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_mixed_model_builds_counts_and_learns(tmp_path, small_corpus):
    cfg = tiny_config(ffn="peer,moe", peer_experts=256, peer_heads=2, peer_topk=4, peer_key_dim=16)
    model = CoSMoE(cfg)
    assert cfg.ffn_kinds == ["peer", "moe"] and len(model.peer_layers()) == 1 and len(model.moe_layers()) == 1
    counts = param_summary(model)
    pool = 2 * 256 * cfg.dim
    moe_inactive = (cfg.num_experts - cfg.top_k) * counts["per_expert"]
    assert counts["all_experts"] == pool + cfg.num_experts * counts["per_expert"]
    assert counts["active"] == counts["total"] - pool + 2 * 2 * 4 * cfg.dim - moe_inactive
    # every part of the PEER layer gets a gradient (retrieval through the softmax weights, BatchNorm included)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    logits, routings = model(x)
    F.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    peer = model.peer_layers()[0]
    for name in ("query.weight", "sub_keys", "w_in.weight", "w_out.weight", "query_norm.weight"):
        assert peer.get_parameter(name).grad.abs().sum() > 0, name
    assert routings[0] is None and routings[1] is not None
    meta = run(cfg, TrainOptions(steps=30, eval_every=30, lr=3e-3, batch_size=8, seq_len=64, eval_windows=8,
                                 warmup=5), tmp_path / "m.pt", small_corpus, None, quiet=True)
    hist = meta["history"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] - 0.5
    (u,) = meta["peer_usage"]
    assert 0 < u["used"] <= 1 and u["kl_uniform"] >= 0
    assert len(meta["switch_rate"]) == 1  # the MoE layer's


def test_edge_train_peer_options(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cosmoe_edge.model.train", *args, "--out", str(tmp_path / "m.pt")],
                              capture_output=True, text=True)
    r = cli("--ffn", "peer", "--peer-experts", "1000", "--corpus", str(tmp_path))
    assert r.returncode == 2 and "perfect square" in r.stderr and "Traceback" not in r.stderr
    r = cli("--ffn", "moe,peer", "--corpus", str(tmp_path))  # the default preset has 4 layers
    assert r.returncode == 2 and "one of them per layer (4" in r.stderr
    assert not (tmp_path / "m.pt").exists()


def test_a_config_without_peer_keeps_its_model():
    """Checkpoints written before PEER load as before: the new fields default and nothing else changes."""
    d = tiny_config().to_dict()
    assert not [k for k in d if k.startswith("peer_")]  # written as before PEER existed (manifests unchanged)
    cfg = ModelConfig.from_dict(d)
    assert cfg.ffn_kinds == ["moe", "moe"] and not CoSMoE(cfg).peer_layers()
    peer = tiny_config(ffn="peer", peer_experts=64, peer_topk=8)
    assert ModelConfig.from_dict(peer.to_dict()) == peer and peer.to_dict()["peer_experts"] == 64


def test_the_compared_peer_layer_costs_what_the_moe_layer_it_replaces_costs():
    """The model card's PEER arm (N = 256^2, 8 heads x top-16, key dim 128) in the middle layer: its feed-forward
    does the MACs of the shipped MoE layer's two experts, and the dense baseline matches the experts too."""
    moe = ModelConfig()
    peer = ModelConfig(ffn="moe,moe,peer,moe", peer_experts=256 ** 2, peer_heads=8, peer_topk=16, peer_key_dim=128)
    experts = 2 * 3 * 256 * 384
    assert ffn_macs(moe) == [256 * 8 + experts] * 4
    assert ffn_macs(peer) == [256 * 8 + experts] * 2 + [experts] + [256 * 8 + experts]
    assert ffn_macs(moe.dense_baseline()) == [experts] * 4


def test_peer_weight_decay_groups_the_pool_and_keys_apart():
    model = CoSMoE(tiny_config(ffn="moe,peer", peer_experts=256, peer_heads=2, peer_topk=4, peer_key_dim=16))
    peer = model.peer_layers()[0]
    pool = {id(peer.w_in.weight), id(peer.w_out.weight), id(peer.sub_keys)}
    same = make_optimizer(model, TrainOptions())  # default: the pool decays like every matrix
    assert all(g["weight_decay"] == 0.1 for g in same.param_groups if pool & {id(p) for p in g["params"]})
    groups = make_optimizer(model, TrainOptions(peer_weight_decay=0.0)).param_groups
    assert [{id(p) for p in g["params"]} for g in groups if g["weight_decay"] == 0.0][-1] == pool
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert id(peer.query.weight) in {id(p) for p in groups[0]["params"]}  # the query network still decays
