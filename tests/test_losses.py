import math

import torch

from cosmoe_edge.model.losses import (
    bles_distribution,
    bles_loss,
    load_balance_loss,
    reuse_loss,
    router_z_loss,
    switch_rate,
)


def test_switch_rate_counts_new_experts_per_slot():
    same = torch.tensor([[[0, 1], [1, 0], [0, 1]]])  # same set, order swapped: no switch
    assert switch_rate(same) == 0
    one_new = torch.tensor([[[0, 1], [0, 2]]])  # one of two slots needs a new expert
    assert switch_rate(one_new) == 0.5
    all_new = torch.tensor([[[0, 1], [2, 3], [0, 1]]])
    assert switch_rate(all_new) == 1.0


def test_bles_is_zero_for_constant_routing_and_grows_with_changes():
    probs = torch.tensor([[0.7, 0.2, 0.1]]).repeat(1, 4, 1)
    experts = probs.topk(2, -1).indices
    assert bles_loss(probs, experts) == 0
    flip = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]])
    h = switch_rate(flip.topk(2, -1).indices)  # 0.5: expert 0 replaced by 2
    assert torch.isclose(bles_loss(flip, flip.topk(2, -1).indices), h * 1.2 / 2)


def test_load_balance_is_per_sequence():
    # each sequence uses one expert only: balanced over the batch, unbalanced per sequence
    probs = torch.tensor([[[1.0, 0.0]] * 4, [[0.0, 1.0]] * 4])
    experts = probs.topk(1, -1).indices
    assert torch.isclose(load_balance_loss(probs, experts), torch.tensor(2.0))  # E * 1: the worst case
    even = torch.tensor([[[1.0, 0.0], [0.0, 1.0]] * 2])
    assert torch.isclose(load_balance_loss(even, even.topk(1, -1).indices), torch.tensor(1.0))


def test_standardized_bles_cannot_be_lowered_by_flattening_the_router():
    logits = torch.randn(2, 16, 8)
    experts = logits.topk(2, -1).indices
    std = bles_loss(bles_distribution(logits, "standardized"), experts)
    assert torch.isclose(std, bles_loss(bles_distribution(0.01 * logits, "standardized"), experts), rtol=1e-4)
    # the literal softmax form falls towards zero as the router flattens, with the same hard choices
    soft = bles_loss(bles_distribution(logits, "softmax"), experts)
    assert bles_loss(bles_distribution(0.01 * logits, "softmax"), experts) < 0.05 * soft


def test_reuse_loss_by_hand_and_its_gradient_pulls_mass_to_the_previous_experts():
    probs = torch.tensor([[[0.7, 0.2, 0.1, 0.0], [0.1, 0.3, 0.2, 0.4], [0.25, 0.25, 0.25, 0.25]]])
    experts = torch.tensor([[[0, 1], [3, 1], [0, 2]]])
    # token 1 on token 0's {0, 1}: 0.1 + 0.3; token 2 on token 1's {3, 1}: 0.25 + 0.25
    want = -(math.log(0.4) + math.log(0.5)) / 2
    assert math.isclose(reuse_loss(probs, experts).item(), want, rel_tol=1e-6)
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    reuse_loss(logits.softmax(-1), torch.tensor([[[0, 1], [2, 3]]])).backward()
    g = logits.grad[0, 1]
    assert g[0] < 0 and g[1] < 0 and g[2] > 0 and g[3] > 0  # descent raises token 1's logits of experts 0, 1
    assert math.isclose(reuse_loss(torch.full((1, 5, 8), 1 / 8), torch.zeros(1, 5, 2, dtype=torch.long) + torch.tensor([0, 1])).item(), math.log(4), rel_tol=1e-6)  # noqa: E501


def test_router_z_loss_and_batch_balance_by_hand():
    assert math.isclose(router_z_loss(torch.zeros(1, 1, 4)).item(), math.log(4) ** 2, rel_tol=1e-6)
    # two sequences, each on one expert: balanced over the batch, not within a sequence
    probs = torch.tensor([[[1.0, 0.0]] * 2, [[0.0, 1.0]] * 2])
    experts = torch.tensor([[[0]] * 2, [[1]] * 2])
    assert math.isclose(load_balance_loss(probs, experts, "sequence").item(), 2.0)
    assert math.isclose(load_balance_loss(probs, experts, "batch").item(), 1.0)
