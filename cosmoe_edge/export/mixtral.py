"""A CoSMoE checkpoint as a transformers Mixtral folder and as a GGUF file, so that other engines
(transformers, llama.cpp) run the same weights.

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
from cosmoe_edge.export.artifact import ordinary_permissions, replace_dir
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


def check_convertible(cfg, plain_top_k: bool = False):
    """Refuse what Mixtral cannot express. A sticky top-k model converts only when asked (`plain_top_k`): Mixtral
    and llama.cpp route each token on its own, so the converted model is the checkpoint with the rule off."""
    if cfg.sticky_delta and not plain_top_k:
        raise ExportError(f"sticky top-k (sticky_delta {cfg.sticky_delta:g}) has no Mixtral form: Mixtral and llama.cpp "
                          "route each token on its own; pass --plain-top-k to convert it without the rule",
                          "not_convertible")
    if cfg.ffn != "moe":
        what = "the dense baseline" if cfg.ffn == "dense" else f"ffn {cfg.ffn!r}"
        raise ExportError(f"only MoE checkpoints (ffn 'moe' in every layer) convert to Mixtral; this one is {what}",
                          "not_moe")
    if cfg.expert_kind != "swiglu":
        raise ExportError("weight-decomposed (wd) experts have no Mixtral form; convert a swiglu-expert model",
                          "not_convertible")
    if cfg.router_kind != "softmax":
        raise ExportError("a CMoE-carved model's router has no Mixtral form", "not_convertible")
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


def to_hf_folder(ckpt: Path, out: Path, plain_top_k: bool = False) -> Path:
    """Write config.json, model.safetensors (fp32), tokenizer.json and tokenizer_config.json into `out`
    (through a temporary folder beside it, renamed when complete)."""
    with Source(ckpt) as source:
        cfg = source.cfg
        check_convertible(cfg, plain_top_k)
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
            eos = eos_id(tokenizer, source.meta)
            (tmp / "config.json").write_text(json.dumps(mixtral_config(cfg, eos), indent=1))
            (tmp / "tokenizer.json").write_text(source.tokenizer_json)
            eos_token = tokenizer.id_to_token(eos)
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token,
                 "model_max_length": cfg.max_seq_len, "clean_up_tokenization_spaces": False}, indent=1))
            ordinary_permissions(tmp)
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def permute_for_ggml(w: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows from rotate-half RoPE order (first halves, then second halves of each head) to the
    adjacent-pair order llama.cpp's llama architecture rotates (llama.cpp's own HF converter does this)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf(ckpt: Path, out: Path, plain_top_k: bool = False) -> Path:
    """One GGUF file (llama architecture with experts, as llama.cpp reads Mixtral; fp32 tensors; the
    byte-level BPE as a gpt2 vocabulary with its merges), written beside `out` and renamed."""
    import gguf

    with Source(ckpt) as source:
        cfg = source.cfg
        check_convertible(cfg, plain_top_k)
        tok = source.tokenizer
        spec = json.loads(source.tokenizer_json)
        w = gguf.GGUFWriter(None, "llama")
        w.add_name(Path(ckpt).stem)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.expert_hidden)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.top_k)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        # the vocabulary: ids beyond the tokenizer's (a larger model vocabulary) become unused tokens
        vocab = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
        special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list([vocab.get(i, f"[UNUSED_{i}]") for i in range(cfg.vocab_size)])
        w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i in vocab
                           else gguf.TokenType.UNUSED for i in range(cfg.vocab_size)])
        merges = spec["model"]["merges"]
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        eos = eos_id(tok, source.meta)
        w.add_eos_token_id(eos)
        w.add_bos_token_id(eos)
        w.add_add_bos_token(False)
        for name, t in gguf_tensors(source):
            w.add_tensor(name, t.numpy())
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        try:
            w.write_header_to_file(tmp)
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out


def gguf_tensors(source: Source):
    """(GGUF name, fp32 tensor) in llama.cpp's layout: experts stacked per layer, q/k permuted."""
    cfg = source.cfg
    yield "token_embd.weight", source.tensor("tok_emb.weight")
    yield "output_norm.weight", source.tensor("norm.weight")
    if not cfg.tie_embeddings:
        yield "output.weight", source.tensor("lm_head.weight")
    for i in range(cfg.n_layers):
        t = lambda name, i=i: source.tensor(f"layers.{i}.{name}")  # noqa: E731
        yield f"blk.{i}.attn_norm.weight", t("attn_norm.weight")
        yield f"blk.{i}.attn_q.weight", permute_for_ggml(t("attn.wq.weight"), cfg.n_heads)
        yield f"blk.{i}.attn_k.weight", permute_for_ggml(t("attn.wk.weight"), cfg.n_kv_heads)
        yield f"blk.{i}.attn_v.weight", t("attn.wv.weight")
        yield f"blk.{i}.attn_output.weight", t("attn.wo.weight")
        yield f"blk.{i}.ffn_norm.weight", t("ffn_norm.weight")
        yield f"blk.{i}.ffn_gate_inp.weight", t("ffn.router.weight")
        for ours, theirs in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
            yield f"blk.{i}.ffn_{theirs}_exps.weight", torch.stack(
                [t(f"ffn.experts.{e}.{ours}.weight") for e in range(cfg.num_experts)])
