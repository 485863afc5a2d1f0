"""Router losses and the expert switch rate, all per sequence (B, T, ...)."""

import torch
import torch.nn.functional as F


def load_balance_loss(probs, experts, scope: str = "sequence"):
    """Switch-style balance E * sum_e f_e * P_e, where f_e is the share of top-k slots given to expert e
    and P_e its mean router probability. "sequence" (CoSMoE's choice): per sequence, then averaged; a
    batch-level loss is satisfied by sequences that each use a single expert. "batch": over the whole
    batch, which leaves a sequence free to stay with a few experts (what stickiness wants)."""
    E = probs.shape[-1]
    dims = (1, 2) if scope == "sequence" else (0, 1, 2)
    f = F.one_hot(experts, E).float().mean(dim=dims)  # (B, E) or (E,)
    P = probs.mean(dim=1) if scope == "sequence" else probs.mean(dim=(0, 1))
    return E * (f * P).sum(-1).mean()


def reuse_loss(probs, experts):
    """A reuse reward that flattening the router cannot win: -mean over t >= 1 of log sum over the
    experts token t-1 chose of p_t(e). Uniform routing pays log(E/k); only putting token t's mass on
    token t-1's experts lowers it. probs (B, T, E), experts (B, T, k)."""
    if experts.shape[1] < 2:
        return probs.new_zeros(())
    mass = probs[:, 1:].gather(-1, experts[:, :-1]).sum(-1)
    return -mass.clamp_min(1e-9).log().mean()


def router_z_loss(logits):
    """ST-MoE's router z-loss: mean of logsumexp(logits)^2, keeping the logits small."""
    return torch.logsumexp(logits.float(), -1).pow(2).mean()


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
