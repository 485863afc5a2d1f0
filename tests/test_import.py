"""edge-import: transformers' own random-initialised models (tiny configs made here, nothing downloaded)
come in as CoSMoE checkpoints that compute what transformers computes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosmoe_edge.errors import CheckpointError
from cosmoe_edge.model.checkpoint import load_model

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cosmoe_edge.model.import_cli"]
TEXT = "The list type is a mutable sequence of items, and dicts map keys to values."
SHAPE = dict(vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, eos_token_id=0)


def hf_folder(folder: Path, kind: str, **kw):
    """A random-initialised transformers model saved with the shipped model's tokenizer; returns it."""
    from tokenizers import Tokenizer
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
    )

    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE | dict(intermediate_size=96, tie_word_embeddings=True) | kw))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPE | dict(intermediate_size=96, tie_word_embeddings=False) | kw))
        with torch.no_grad():  # transformers initialises biases to zero: make them count
            for name, p in model.named_parameters():
                if name.endswith("proj.bias"):
                    p.normal_(0, 0.5)
    elif kind == "qwen2_moe":  # top-k weights as they are (norm_topk_prob False), a gated shared expert
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**SHAPE | dict(
            intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
            num_experts_per_tok=2, norm_topk_prob=False, tie_word_embeddings=False) | kw))
        with torch.no_grad():  # transformers initialises the routers and biases to zero: make them count
            for name, p in model.named_parameters():
                if name.endswith(("proj.bias", "mlp.gate.weight")):
                    p.normal_(0, 0.5)
    elif kind == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**SHAPE | dict(intermediate_size=64, num_local_experts=4,
                                                                num_experts_per_tok=2, tie_word_embeddings=False) | kw))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_embd=64, n_layer=2, n_head=4))
    model.eval().save_pretrained(folder)
    tokenizer_json = torch.load(ROOT / "models" / "cosmoe-default.pt", weights_only=True, mmap=True)["tokenizer"]
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json),
                            eos_token="<|endoftext|>").save_pretrained(folder)
    return model


def edge_import(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mixtral", "qwen2_moe"])
def test_import_computes_what_transformers_computes(tmp_path, kind):
    from transformers import AutoTokenizer

    from cosmoe_edge.model.generate import generate

    theirs = hf_folder(tmp_path / "hf", kind)
    r = edge_import(tmp_path / "hf", "--out", tmp_path / "m.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    ours, tok, ckpt = load_model(tmp_path / "m.pt")
    assert ours.cfg.ffn == ("dense" if kind in ("llama", "qwen2") else "moe")
    assert ours.cfg.attn_bias == kind.startswith("qwen2") and ours.cfg.router_renorm == (kind != "qwen2_moe")
    assert ours.cfg.tie_embeddings == (kind == "llama") and ckpt["meta"]["eos_id"] == 0
    x = torch.randint(0, 4096, (2, 48))
    assert (theirs(x).logits - ours(x)[0]).abs().max().item() <= 1e-4
    ids = tok.encode(TEXT).ids
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXT)["input_ids"] == ids
    want = theirs.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert generate(ours, ids, 12) == want[0, len(ids):].tolist()


@torch.no_grad()
@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_imported_moe_exports_and_runs_as_transformers_generates(tmp_path, kind):
    from cosmoe_edge.export.artifact import export_artifact
    from cosmoe_edge.runtime.engine import Engine
    from cosmoe_edge.runtime.generate import Sampler, generate

    theirs = hf_folder(tmp_path / "hf", kind)
    assert edge_import(tmp_path / "hf", "--out", tmp_path / "m.pt").returncode == 0
    m = export_artifact(tmp_path / "m.pt", tmp_path / "art", "fp32", 32, ["onnx"], jobs=1, verify=False)
    assert m["tokenizer"]["eos_id"] == 0
    _, tok, _ = load_model(tmp_path / "m.pt")
    ids = tok.encode(TEXT).ids
    engine = Engine(tmp_path / "art", "onnx")
    out, _, _ = generate(engine, ids, 12, Sampler())
    engine.close()
    want = theirs.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert out == want[0, len(ids):].tolist()


def test_refusals_are_one_clear_line(tmp_path):
    from transformers import LlamaConfig

    from cosmoe_edge.model.importer import model_config

    hf_folder(tmp_path / "gpt2", "gpt2")
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken.pt").write_bytes(b"x")
    gguf = tmp_path / "moe.gguf"  # llama.cpp's MoE form, which transformers reads as a dense Llama
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.export.convert", ROOT / "models" / "cosmoe-default.pt",
                        "--to", "gguf", "--plain-top-k", "--out", gguf], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for args, message in (((tmp_path / "gpt2",), "architecture GPT2LMHeadModel"),
                          ((gguf,), "do not fill a LlamaForCausalLM"),
                          ((tmp_path / "nothing",), "not found"),
                          ((tmp_path / "empty",), "neither a transformers checkpoint folder"),
                          ((tmp_path / "gpt2", "--out", tmp_path / "taken.pt"), "pass --force")):
        r = edge_import(*args, *(() if "--out" in args else ("--out", tmp_path / "no.pt")))
        errors = [line for line in r.stderr.splitlines() if "edge-import: error:" in line]
        assert r.returncode == 2 and len(errors) == 1 and message in errors[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr and not (tmp_path / "no.pt").exists()
    assert (tmp_path / "taken.pt").read_bytes() == b"x"

    base = SHAPE | dict(intermediate_size=96)
    for kw, message in ((dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "RoPE scaling"),
                        (dict(attention_bias=True), "biases"), (dict(hidden_act="gelu"), "activation")):
        with pytest.raises(CheckpointError, match=message):
            model_config(LlamaConfig(**base | kw))
    with pytest.raises(CheckpointError, match="exceeds"):
        model_config(LlamaConfig(**base), max_seq_len=512)
    assert model_config(LlamaConfig(**base | dict(max_position_embeddings=131072))).max_seq_len == 2048
