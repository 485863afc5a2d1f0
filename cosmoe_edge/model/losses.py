"""Router losses and the expert switch rate, all per sequence (B, T, ...)."""

import torch
import torch.nn.functional as F


def load_balance_loss(probs, experts):
    """Switch-style balance computed per sequence, then averaged: E * sum_e f_e * P_e, where f_e is
    the share of the sequence's top-k slots given to expert e and P_e its mean router probability.
    Per sequence (CoSMoE's choice): a batch-level loss is satisfied by sequences that each use a
    single expert, which defeats the point of having several."""
    E = probs.shape[-1]
    f = F.one_hot(experts, E).float().mean(dim=(1, 2))  # (B, E)
    P = probs.mean(dim=1)  # (B, E)
    return E * (f * P).sum(-1).mean()


@torch.no_grad()
def switch_rate(experts):
    """Hard replacement rate: the fraction of (consecutive token pair, slot) positions where token
    t+1 needs an expert that token t did not use. experts: (B, T, k) ids. 0 = perfect reuse."""
    if experts.shape[1] < 2:
        return experts.new_zeros((), dtype=torch.float32)
    nxt, prev = experts[:, 1:, :, None], experts[:, :-1, None, :]
    new = (nxt != prev).all(-1)  # (B, T-1, k): slot's expert absent from the previous set
    return new.float().mean()


def bles_loss(W, experts):
    """Block-wise Expert Selection loss (CoSMoE): H * L where L = sum_{t,e} |W[t+1,e] - W[t,e]| / (B*T)
    is the soft change of routing between consecutive tokens and H the hard switch rate (no grad),
    so the penalty fades as routing becomes sticky. W: (B, T, E) routing distributions."""
    B, T, _ = W.shape
    soft = (W[:, 1:] - W[:, :-1]).abs().sum() / (B * T)
    return switch_rate(experts) * soft


def bles_distribution(logits, form: str):
    """W for BlES. "softmax": the router's probabilities, as the paper writes it. "standardized":
    softmax(logits / std(logits)), invariant to the logits' scale, so the loss can only fall by
    making consecutive tokens rank experts alike (see ModelConfig.bles_form)."""
    logits = logits.float()
    if form == "standardized":
        logits = logits / (logits.std(-1, keepdim=True) + 1e-6)
    return logits.softmax(-1)
