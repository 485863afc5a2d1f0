import torch

from cosmoe_edge.model.losses import bles_distribution, bles_loss, load_balance_loss, switch_rate


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
