"""edge-convert: a CoSMoE checkpoint as a transformers Mixtral folder gives the eager model's logits."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from cosmoe_edge.model.checkpoint import load_model, save_checkpoint
from cosmoe_edge.model.generate import generate
from cosmoe_edge.model.model import CoSMoE
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cosmoe_edge.export.convert"]
TEXT = "The list type is a mutable sequence of items, and"


def convert(model: Path, out: Path, *flags: str):
    r = subprocess.run([*CLI, str(model), "--out", str(out), *flags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def hf(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def test_shipped_model_in_transformers_equals_eager(tmp_path):
    model_path = ROOT / "models" / "cosmoe-default.pt"
    r = subprocess.run([*CLI, str(model_path), "--out", str(tmp_path / "hf")], capture_output=True, text=True)
    assert r.returncode == 2 and "--plain-top-k" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    convert(model_path, tmp_path / "hf", "--plain-top-k")
    theirs, tok = hf(tmp_path / "hf")
    ours, our_tok, _ = load_model(model_path)
    assert ours.cfg.sticky_delta > 0
    ours.set_sticky(0.0)  # Mixtral routes each token on its own: the checkpoint with the rule off
    ids = our_tok.encode(TEXT).ids
    assert tok(TEXT)["input_ids"] == ids  # the byte-level BPE survives
    x = torch.tensor([ids])
    assert (theirs(x).logits - ours(x)[0]).abs().max().item() <= 1e-4
    greedy = theirs.generate(x, max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    assert greedy == generate(ours, ids, 16)


@torch.no_grad()
def test_untied_head_and_refusals(tmp_path, tiny_model):
    tokenizer_json = torch.load(tiny_model, weights_only=True)["tokenizer"]
    untied = CoSMoE(tiny_config(tie_embeddings=False))
    save_checkpoint(tmp_path / "untied.pt", untied, tokenizer_json, {})
    convert(tmp_path / "untied.pt", tmp_path / "hf")
    theirs, _ = hf(tmp_path / "hf")
    x = torch.randint(0, untied.cfg.vocab_size, (2, 24))
    assert (theirs(x).logits - untied.eval()(x)[0]).abs().max().item() <= 1e-4

    for name, cfg, message in (("wd.pt", tiny_config(expert_kind="wd", wd_rank=16), "wd"),
                               ("shared.pt", tiny_config(shared_expert_hidden=32), "shared expert")):
        save_checkpoint(tmp_path / name, CoSMoE(cfg), tokenizer_json, {})
        r = subprocess.run([*CLI, str(tmp_path / name), "--out", str(tmp_path / "no")], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "no").exists()
        assert not list(tmp_path.glob(".no.*"))


def test_gguf_reads_back_as_the_checkpoint(tmp_path):
    import gguf

    from cosmoe_edge.export.mixtral import permute_for_ggml

    model_path = ROOT / "models" / "cosmoe-default.pt"
    r = subprocess.run([*CLI, str(model_path), "--to", "gguf", "--plain-top-k", "--out", str(tmp_path / "m.gguf")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model, tok, ckpt = load_model(model_path)
    cfg, state = model.cfg, ckpt["state_dict"]
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert (field("llama.block_count"), field("llama.embedding_length"), field("llama.feed_forward_length"),
            field("llama.attention.head_count"), field("llama.attention.head_count_kv"), field("llama.expert_count"),
            field("llama.expert_used_count")) == (cfg.n_layers, cfg.dim, cfg.expert_hidden, cfg.n_heads,
                                                  cfg.n_kv_heads, cfg.num_experts, cfg.top_k)
    assert field("llama.rope.freq_base") == cfg.rope_theta
    assert abs(field("llama.attention.layer_norm_rms_epsilon") - cfg.norm_eps) < 1e-12
    vocab = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    assert field("tokenizer.ggml.tokens") == [vocab[i] for i in range(cfg.vocab_size)]
    assert len(field("tokenizer.ggml.merges")) == len(json.loads(ckpt["tokenizer"])["model"]["merges"])
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    # every tensor, undone to the checkpoint's layout, is the checkpoint's exactly
    inverse = lambda w, heads: w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)  # noqa: E731
    assert torch.equal(tensors["token_embd.weight"], state["tok_emb.weight"].float())
    for i in range(cfg.n_layers):
        s = lambda n, i=i: state[f"layers.{i}.{n}"].float()  # noqa: E731
        q, k = tensors[f"blk.{i}.attn_q.weight"], tensors[f"blk.{i}.attn_k.weight"]
        assert torch.equal(inverse(q, cfg.n_heads), s("attn.wq.weight"))
        assert torch.equal(inverse(k, cfg.n_kv_heads), s("attn.wk.weight"))
        assert torch.equal(permute_for_ggml(s("attn.wq.weight"), cfg.n_heads), q)
        assert torch.equal(tensors[f"blk.{i}.ffn_gate_inp.weight"], s("ffn.router.weight"))
        for ours, theirs in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
            stacked = tensors[f"blk.{i}.ffn_{theirs}_exps.weight"]
            assert all(torch.equal(stacked[e], s(f"ffn.experts.{e}.{ours}.weight")) for e in range(cfg.num_experts))
    assert len(tensors) == 2 + 10 * cfg.n_layers  # embedding (tied head), final norm, 10 per layer
