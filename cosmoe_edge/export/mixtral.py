"""A CoSMoE checkpoint as a transformers Mixtral folder, so that other engines (transformers, and
llama.cpp through its own converter) run the same weights.

The mapping is exact, not approximate: CoSMoE's layer is Mixtral's (RMSNorm, GQA attention with
rotate-half RoPE, a softmax router whose top-k weights are renormalised, SwiGLU experts w1/w3/w2), so
its names change and nothing else. Weight-decomposed (`wd`) experts and a shared expert have no
Mixtral counterpart and are refused.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from cosmoe_edge.errors import ExportError
from cosmoe_edge.export.source import Source
from cosmoe_edge.model.tokenizer import eos_id


def mixtral_config(cfg, eos: int) -> dict:
    return {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.expert_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
        "num_local_experts": cfg.num_experts, "num_experts_per_tok": cfg.top_k, "router_aux_loss_coef": 0.0,
        "output_router_logits": False, "sliding_window": None, "attention_dropout": 0.0,
        "bos_token_id": None, "eos_token_id": eos, "torch_dtype": "float32",
    }


def check_convertible(cfg):
    if cfg.ffn != "moe":
        raise ExportError("only MoE checkpoints convert to Mixtral; this one is the dense baseline", "not_moe")
    if cfg.expert_kind != "swiglu":
        raise ExportError("weight-decomposed (wd) experts have no Mixtral form; convert a swiglu-expert model",
                          "not_convertible")
    if cfg.shared_expert_hidden:
        raise ExportError("a shared expert has no Mixtral form (Qwen2-MoE has one, but not its routing)",
                          "not_convertible")


def mixtral_tensors(source: Source, layer: int) -> dict[str, torch.Tensor]:
    """One layer's tensors under Mixtral's names."""
    cfg, p = source.cfg, f"model.layers.{layer}."
    t = lambda name: source.tensor(f"layers.{layer}.{name}")  # noqa: E731
    out = {p + "input_layernorm.weight": t("attn_norm.weight"),
           p + "post_attention_layernorm.weight": t("ffn_norm.weight"),
           p + "block_sparse_moe.gate.weight": t("ffn.router.weight")}
    for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
        out[p + f"self_attn.{theirs}.weight"] = t(f"attn.{ours}.weight")
    for e in range(cfg.num_experts):
        for w in ("w1", "w2", "w3"):
            out[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = t(f"ffn.experts.{e}.{w}.weight")
    return out


def to_hf_folder(ckpt: Path, out: Path) -> Path:
    """Write config.json, model.safetensors (fp32), tokenizer.json and tokenizer_config.json into `out`
    (through a temporary folder beside it, renamed when complete)."""
    with Source(ckpt) as source:
        cfg = source.cfg
        check_convertible(cfg)
        tokenizer = source.tokenizer
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            tensors = {"model.embed_tokens.weight": source.tensor("tok_emb.weight"),
                       "model.norm.weight": source.tensor("norm.weight")}
            if not cfg.tie_embeddings:
                tensors["lm_head.weight"] = source.tensor("lm_head.weight")
            for i in range(cfg.n_layers):
                tensors |= mixtral_tensors(source, i)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            eos = eos_id(tokenizer)
            (tmp / "config.json").write_text(json.dumps(mixtral_config(cfg, eos), indent=1))
            (tmp / "tokenizer.json").write_text(source.tokenizer_json)
            eos_token = tokenizer.id_to_token(eos)
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token,
                 "model_max_length": cfg.max_seq_len, "clean_up_tokenization_spaces": False}, indent=1))
            umask = os.umask(0)
            os.umask(umask)
            for f in [tmp, *tmp.iterdir()]:
                f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
