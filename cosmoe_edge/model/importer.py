"""Checkpoints people already have -> model.pt: a transformers folder (config.json + safetensors +
tokenizer) or a GGUF file, read by transformers (GGUF through the `gguf` package), its weights renamed
onto CoSMoE's modules.

Only architectures whose maths CoSMoE computes exactly are taken, each checked field by field, so an
import is a renaming and nothing else: Llama (SmolLM2, Llama 2/3 without RoPE scaling: RMSNorm, GQA with
rotate-half RoPE, SwiGLU) and Qwen2 (the same with biases on q, k, v) as dense models, Mixtral (the
same layer with a softmax router whose top-k weights are renormalised, SwiGLU experts) and Qwen2-MoE
(top-k weights renormalised or not, a shared expert gated by a sigmoid) as MoE models.
Anything else is refused in one line that names it.
"""

from pathlib import Path

import torch

from cosmoe_edge.errors import CheckpointError
from cosmoe_edge.model.config import ModelConfig

# transformers model_type -> CoSMoE ffn (a GGUF names no class)
ARCHITECTURES = {"llama": "dense", "qwen2": "dense", "mixtral": "moe", "qwen2_moe": "moe"}
DEFAULT_MAX_SEQ_LEN = 2048  # the KV cache's rows: a phone cannot hold 8k-128k positions for a 30-layer model


def locate(source: Path) -> tuple[str, dict]:
    """(folder, extra from_pretrained arguments) for a transformers folder or a .gguf file."""
    if source.is_file() and source.suffix == ".gguf":
        return str(source.parent), {"gguf_file": source.name}
    if source.is_dir() and (source / "config.json").is_file():
        return str(source), {}
    if source.is_dir() and (ggufs := sorted(source.glob("*.gguf"))):
        if len(ggufs) > 1:
            raise CheckpointError(f"{source} holds {len(ggufs)} GGUF files; name one", "bad_source")
        return str(source), {"gguf_file": ggufs[0].name}
    if not source.exists():
        raise CheckpointError(f"not found: {source}", "bad_source")
    raise CheckpointError(f"{source} is neither a transformers checkpoint folder (config.json + weights) nor a "
                          ".gguf file", "bad_source")


def quiet_transformers():
    """transformers' load reports and progress bars, and torchao's notes on CUDA kernels it cannot load, are
    noise here: edge-import reports what matters itself."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def read_config(source: Path):
    quiet_transformers()
    from transformers import AutoConfig

    folder, extra = locate(source)
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, **extra)
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source}: transformers cannot read its config ({first[:200]})", "bad_source") from None


def architecture(hf) -> str:
    return (getattr(hf, "architectures", None) or [type(hf).__name__.removesuffix("Config") + "ForCausalLM"])[0]


def model_config(hf, max_seq_len: int = 0) -> ModelConfig:
    """CoSMoE's config for a transformers config, or CheckpointError naming what CoSMoE does not compute."""
    arch = architecture(hf)
    kind = ARCHITECTURES.get(hf.model_type)
    if kind is None:
        raise CheckpointError(f"architecture {arch} (model_type {hf.model_type!r}) is not supported; edge-import "
                              "reads Llama and Qwen2 (dense), Mixtral and Qwen2-MoE (MoE)", "unsupported_architecture")

    def refuse(what: str):
        raise CheckpointError(f"{arch} with {what} is not supported (CoSMoE would not compute the same model)",
                              "unsupported_architecture")

    rope = getattr(hf, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        refuse(f"RoPE scaling {rope['rope_type']!r}")
    if hf.hidden_act != "silu":
        refuse(f"activation {hf.hidden_act!r}")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        refuse("biases in attention or MLP")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if head_dim * hf.num_attention_heads != hf.hidden_size:
        refuse(f"head_dim {head_dim} x {hf.num_attention_heads} heads != hidden_size {hf.hidden_size}")
    allowed = hf.max_position_embeddings
    if getattr(hf, "sliding_window", None):  # within the window sliding attention is full attention
        allowed = min(allowed, hf.sliding_window)
    if max_seq_len > allowed:
        raise CheckpointError(f"--max-seq-len {max_seq_len} exceeds what {arch} allows ({allowed})", "bad_request")
    common = dict(vocab_size=hf.vocab_size, dim=hf.hidden_size, n_layers=hf.num_hidden_layers,
                  n_heads=hf.num_attention_heads, n_kv_heads=hf.num_key_value_heads,
                  max_seq_len=max_seq_len or min(allowed, DEFAULT_MAX_SEQ_LEN),
                  rope_theta=float(rope.get("rope_theta", 10000.0)), norm_eps=float(hf.rms_norm_eps),
                  tie_embeddings=bool(hf.tie_word_embeddings),
                  attn_bias=hf.model_type == "qwen2" or bool(getattr(hf, "qkv_bias", False)),
                  lb_weight=0.0, bles_weight=0.0)
    if kind == "dense":
        return ModelConfig(ffn="dense", dense_hidden=hf.intermediate_size, **common)
    if hf.model_type == "qwen2_moe":
        if hf.mlp_only_layers or hf.decoder_sparse_step != 1:
            refuse("dense layers among the MoE layers (mlp_only_layers, decoder_sparse_step)")
        # routing as Qwen2-MoE's: top-k of the softmax, renormalised only if norm_topk_prob; a shared
        # expert, gated by sigmoid(g . x), beside the routed ones
        return ModelConfig(ffn="moe", num_experts=hf.num_experts, top_k=hf.num_experts_per_tok,
                           expert_hidden=hf.moe_intermediate_size, expert_kind="swiglu",
                           shared_expert_hidden=hf.shared_expert_intermediate_size, shared_expert_gate=True,
                           router_renorm=bool(hf.norm_topk_prob), **common)
    return ModelConfig(ffn="moe", num_experts=hf.num_local_experts, top_k=hf.num_experts_per_tok,
                       expert_hidden=hf.intermediate_size, expert_kind="swiglu", **common)


def state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' tensors under CoSMoE's names (fp32)."""
    t = lambda name: hf_state[name].float().contiguous()  # noqa: E731
    out = {"tok_emb.weight": t("model.embed_tokens.weight"), "norm.weight": t("model.norm.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = t("lm_head.weight")
    for i in range(cfg.n_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[q + "attn_norm.weight"] = t(p + "input_layernorm.weight")
        out[q + "ffn_norm.weight"] = t(p + "post_attention_layernorm.weight")
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            out[q + f"attn.{ours}.weight"] = t(p + f"self_attn.{theirs}.weight")
            if cfg.attn_bias and ours != "wo":
                out[q + f"attn.{ours}.bias"] = t(p + f"self_attn.{theirs}.bias")
        if cfg.ffn == "dense":
            for ours, theirs in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                out[q + f"ffn.{ours}.weight"] = t(p + f"mlp.{theirs}.weight")
            continue
        out[q + "ffn.router.weight"] = t(p + "mlp.gate.weight")
        gate_up, down = t(p + "mlp.experts.gate_up_proj"), t(p + "mlp.experts.down_proj")  # (E, 2I, D), (E, D, I)
        for e in range(cfg.num_experts):
            w1, w3 = gate_up[e].chunk(2, dim=0)
            out[q + f"ffn.experts.{e}.w1.weight"] = w1.contiguous()
            out[q + f"ffn.experts.{e}.w3.weight"] = w3.contiguous()
            out[q + f"ffn.experts.{e}.w2.weight"] = down[e].contiguous()
        if cfg.shared_expert_hidden:
            for ours, theirs in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                out[q + f"ffn.shared.{ours}.weight"] = t(p + f"mlp.shared_expert.{theirs}.weight")
            out[q + "ffn.shared_gate.weight"] = t(p + "mlp.shared_expert_gate.weight")
    return out


def eos_of(hf_cfg, tokenizer) -> int | None:
    """The id that ends a generation: the model's own (generation or model config), else the tokenizer's."""
    eos = getattr(hf_cfg, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos if eos is not None else tokenizer.eos_token_id


def load(source: Path, max_seq_len: int = 0):
    """(ModelConfig, CoSMoE state dict, tokenizer JSON, meta) for a transformers folder or GGUF file."""
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_cfg = read_config(source)
    cfg = model_config(hf_cfg, max_seq_len)
    folder, extra = locate(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{source}: no tokenizer that transformers reads ({str(e).splitlines()[0][:200]})",
                              "bad_source") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{source}: its tokenizer has no tokenizers (fast) form", "bad_source")
    hf, info = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                    output_loading_info=True, **extra)
    # transformers fills what a file lacks with random weights and carries on: an import must not
    missing = sorted(k if isinstance(k, str) else k[0]
                     for k in [*(info.get("missing_keys") or []), *(info.get("mismatched_keys") or [])])
    if missing:
        raise CheckpointError(f"{source}: its tensors do not fill a {architecture(hf_cfg)} ({len(missing)} missing or "
                              f"mismatched, e.g. {missing[0]}); a GGUF of llama.cpp's MoE form is not read by "
                              "transformers as an MoE" if "gguf_file" in extra else
                              f"{source}: its tensors do not fill a {architecture(hf_cfg)} ({len(missing)} missing "
                              f"or mismatched, e.g. {missing[0]})", "bad_source")
    weights = state_dict(hf.state_dict(), cfg)
    meta = {"imported_from": source.name, "architecture": architecture(hf_cfg),
            "format": "gguf" if "gguf_file" in extra else "transformers",
            "max_position_embeddings": hf_cfg.max_position_embeddings, "eos_id": eos_of(hf_cfg, tokenizer)}
    return cfg, weights, tokenizer.backend_tokenizer.to_str(), meta
