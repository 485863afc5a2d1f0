"""Sticky top-k (ModelConfig.sticky_delta): the rule by hand, delta 0 == plain top-k, the eager model's decode
carrying it, training with it, and the exported model's runtime applying it exactly as the eager model does."""

import math

import numpy as np
import pytest
import torch

from cosmoe_edge.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.model import CoSMoE, route, sticky_route
from cosmoe_edge.model.train import TrainOptions, run, sticky_scale
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.selection import Selection, SelectionCounts, Sticky, select
from tests.conftest import _export, tiny_config

FAST = dict(batch_size=8, seq_len=64, eval_windows=8, warmup=10)


def test_sticky_route_by_hand():
    # token 0 picks {0, 1}; token 1 prefers {2, 3}, expert 3 by 0.2 logits over expert 1: delta 1 keeps 1
    z = torch.tensor([[[3.0, 2.0, 0.0, 0.0], [0.0, 1.0, 1.5, 1.2]]])
    probs, experts, weights, last = sticky_route(z, 2, 1.0)
    assert experts.tolist() == [[[0, 1], [1, 2]]]  # by biased rank: expert 1 at 2.0, expert 2 at 1.5
    p = z[0, 1].softmax(-1)  # the weights stay the unbiased probabilities, renormalised
    assert torch.allclose(weights[0, 1], p[[1, 2]] / p[[1, 2]].sum())
    assert last.tolist() == [[0, 1, 1, 0]]
    assert sticky_route(z, 2, 0.1)[1].tolist() == [[[0, 1], [2, 3]]]  # a margin of 0.2 beats a delta of 0.1
    # a mask carried in from the previous call (decode) applies to the first row
    assert sticky_route(z[:, 1:], 2, 1.0, prev=torch.tensor([[0.0, 0.0, 0.0, 1.0]]))[1].tolist() == [[[3, 2]]]


def test_delta_zero_is_plain_top_k_exactly():
    z = torch.randn(4, 50, 8)
    probs, experts, weights, _ = sticky_route(z, 2, 0.0)
    p2, e2, w2 = route(z.view(-1, 8), 2)
    assert torch.equal(experts.view(-1, 2), e2) and torch.equal(weights.view(-1, 2), w2)
    # and in the runtime: select() with a zero-delta state is select() without one
    logits = z[0].numpy()
    s = Selection(2)
    plain = select(logits, 2, True, s, None, None, SelectionCounts())
    zero = select(logits, 2, True, s, None, None, SelectionCounts(), Sticky(0.0, np.zeros(8, np.float32)))
    assert np.array_equal(plain[0], zero[0]) and np.array_equal(plain[1], zero[1])


def test_runtime_select_applies_the_same_rule_row_by_row():
    z = torch.randn(1, 40, 8) * 2
    _, experts, weights, last = sticky_route(z, 2, 1.5)
    st = Sticky(1.5, np.zeros(8, np.float32))
    got_e, got_w, _ = select(z[0].numpy(), 2, True, Selection(2), None, None, SelectionCounts(), st)
    assert got_e.tolist() == experts[0].tolist()
    np.testing.assert_allclose(got_w, weights[0].numpy(), atol=1e-6)
    assert st.prev.tolist() == last[0].tolist()
    # the same rows in two calls (a prefill, then one decode step) carry the state across
    st.reset()
    first = select(z[0, :39].numpy(), 2, True, Selection(2), None, None, SelectionCounts(), st)[0]
    step = select(z[0, 39:].numpy(), 2, True, Selection(2), None, None, SelectionCounts(), st)[0]
    assert np.concatenate([first, step]).tolist() == experts[0].tolist()


def test_eager_decode_carries_the_rule_between_steps():
    torch.manual_seed(3)
    model = CoSMoE(tiny_config(sticky_delta=2.0)).eval()
    ids = torch.randint(0, 512, (1, 24))
    with torch.no_grad():
        full, routings = model(ids)
        model.setup_cache()
        steps = [model(ids[:, :10], torch.arange(10))[0]]
        steps += [model(ids[:, t:t + 1], torch.tensor([t]))[0] for t in range(10, 24)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    # and the rule did something: plain top-k routes these tokens differently
    plain = CoSMoE(tiny_config()).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert any(not torch.equal(a.experts, b.experts) for a, b in zip(plain(ids)[1], routings, strict=True))


def test_config_refuses_a_negative_delta_or_a_cmoe_router():
    with pytest.raises(ValueError, match="sticky_delta"):
        ModelConfig(sticky_delta=-1.0)
    with pytest.raises(ValueError, match="sticky_delta"):
        ModelConfig(sticky_delta=1.0, router_kind="cmoe")
    assert ModelConfig(sticky_delta=1.0).dense_baseline().sticky_delta == 0.0


def test_delta_ramps_in_after_sticky_from():
    o = TrainOptions(steps=100, sticky_from=0.25)
    assert [sticky_scale(s, o) for s in (0, 25, 30, 50, 99)] == [0.0, 0.0, 0.2, 1.0, 1.0]


def test_sticky_training_lowers_switch_rate(tmp_path, small_corpus):
    opts = TrainOptions(steps=80, eval_every=80, lr=3e-3, sticky_from=0.25, **FAST)
    base = run(tiny_config(bles_weight=0.0), opts, tmp_path / "a.pt", small_corpus, None, quiet=True)
    sticky = run(tiny_config(bles_weight=0.0, sticky_delta=1.5), opts, tmp_path / "s.pt", small_corpus, None,
                 quiet=True)
    assert sticky["switch_rate_mean"] < 0.7 * base["switch_rate_mean"], (sticky["switch_rate_mean"],
                                                                         base["switch_rate_mean"])
    assert load_checkpoint(tmp_path / "s.pt")["config"]["sticky_delta"] == 1.5  # the full delta, not the ramp


@pytest.fixture(scope="module")
def sticky_model(tmp_path_factory, tiny_model):
    """The tiny model with a sticky delta large enough to change its routing."""
    ckpt = load_checkpoint(tiny_model)
    model = CoSMoE(ModelConfig.from_dict(ckpt["config"] | {"sticky_delta": 1.0}))
    model.load_state_dict(ckpt["state_dict"])
    path = tmp_path_factory.mktemp("sticky") / "sticky.pt"
    save_checkpoint(path, model, ckpt["tokenizer"], ckpt["meta"])
    return path


@pytest.mark.parametrize("budget", [None, 0.5])
def test_exported_sticky_model_matches_the_eager_model(tmp_path_factory, sticky_model, budget):
    artifact = _export(tmp_path_factory, sticky_model, "fp32", ["onnx"])
    model = load_model(sticky_model)[0]
    ids = list(range(3, 60))
    with torch.no_grad():
        want, routings = model(torch.tensor([ids]))
    engine = Engine(artifact, "onnx", trace=True)
    if budget:
        engine.close()
        engine = Engine(artifact, "onnx", trace=True, budget_bytes=int(budget * engine.expert_bytes_total))
    try:
        got = np.concatenate([engine.forward(ids[:20], all_logits=True)] +
                             [engine.forward([i]) for i in ids[20:]])  # prefill, then decode steps
        trace = engine.routing.trace
        engine.reset()  # a new sequence starts without the last one's experts: same first token, same routing
        engine.forward(ids[:1])
        trace += engine.routing.trace
    finally:
        engine.close()
    assert np.abs(got - want[0].numpy()).max() < 1e-3
    traced = {}
    for step in trace:
        traced.setdefault(step["layer"], []).extend(step["experts"])
    for layer, r in enumerate(routings):
        assert traced[layer] == r.experts[0].tolist() + r.experts[0, :1].tolist(), layer
    assert math.isclose(engine.manifest["model"]["sticky_delta"], 1.0)
