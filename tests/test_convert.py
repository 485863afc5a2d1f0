"""edge-convert: a CoSMoE checkpoint as a transformers Mixtral folder gives the eager model's logits."""

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


def convert(model: Path, out: Path):
    r = subprocess.run([*CLI, str(model), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def hf(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def test_shipped_model_in_transformers_equals_eager(tmp_path):
    model_path = ROOT / "models" / "cosmoe-default.pt"
    convert(model_path, tmp_path / "hf")
    theirs, tok = hf(tmp_path / "hf")
    ours, our_tok, _ = load_model(model_path)
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
