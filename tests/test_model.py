import pytest
import torch

from cosmoe_edge.model.model import CoSMoE, param_summary, route
from tests.conftest import tiny_config

VARIANTS = {
    "swiglu": {},
    "wd": {"expert_kind": "wd"},
    "shared": {"shared_expert_hidden": 48},
    "dense": {"ffn": "dense", "dense_hidden": 192},
    "untied": {"tie_embeddings": False},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_decode_equals_full_forward(variant):
    model = CoSMoE(tiny_config(**VARIANTS[variant])).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        full, _ = model(tokens)
        model.setup_cache(batch=2)
        prefill, _ = model(tokens[:, :10], torch.arange(10))  # a prompt, then one token at a time
        steps = [prefill] + [model(tokens[:, t:t + 1], torch.tensor([t]))[0] for t in range(10, 24)]
    inc = torch.cat(steps, dim=1)
    assert torch.allclose(inc, full, atol=1e-5), (inc - full).abs().max()


def test_routing_picks_true_top_k_with_weights_summing_to_one():
    logits = torch.randn(50, 8)
    probs, experts, weights = route(logits, 2)
    assert torch.allclose(probs, logits.softmax(-1))
    ranks = logits.argsort(-1, descending=True)[:, :2]
    assert torch.equal(experts.sort(-1).values, ranks.sort(-1).values)
    assert torch.allclose(weights.sum(-1), torch.ones(50))
    # renormalised over the chosen k: ratio of weights equals the ratio of their probabilities
    p = probs.gather(-1, experts)
    assert torch.allclose(weights[:, 0] / weights[:, 1], p[:, 0] / p[:, 1])


def test_moe_output_is_weighted_sum_of_chosen_experts():
    model = CoSMoE(tiny_config()).eval()
    moe = model.layers[0].ffn
    x = torch.randn(1, 5, model.cfg.dim)
    with torch.no_grad():
        y, r = moe(x)
        for t in range(5):
            want = sum(r.weights[0, t, s] * moe.experts[int(r.experts[0, t, s])](x[0, t]) for s in range(2))
            assert torch.allclose(y[0, t], want, atol=1e-6)


def test_wd_parameter_count_matches_formula():
    cfg = tiny_config(expert_kind="wd", wd_rank=16)
    model = CoSMoE(cfg)
    d, h, r = cfg.dim, cfg.expert_hidden, cfg.wd_rank
    per_expert = 3 * r * (d + h)  # w1, w3: d->h and w2: h->d, each L (n x r) @ R (r x m)
    counts = param_summary(model)
    assert counts["per_expert"] == per_expert
    assert counts["all_experts"] == per_expert * cfg.num_experts * cfg.n_layers
    full = param_summary(CoSMoE(tiny_config()))
    assert counts["total"] - counts["all_experts"] == full["total"] - full["all_experts"]


def test_dense_baseline_matches_active_flops():
    cfg = tiny_config()
    moe_active = param_summary(CoSMoE(cfg))["active"]
    dense = param_summary(CoSMoE(cfg.dense_baseline()))["total"]
    router = cfg.dim * cfg.num_experts * cfg.n_layers
    assert dense == moe_active - router


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError):
        tiny_config(top_k=9)
    with pytest.raises(ValueError):
        tiny_config(expert_kind="lowrank")
