import subprocess
import sys

import pytest
import torch

from cosmoe_edge.model.checkpoint import CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint
from cosmoe_edge.model.data import read_documents, split_documents
from cosmoe_edge.model.model import CoSMoE
from cosmoe_edge.model.tokenizer import train_tokenizer
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tok(small_corpus):
    train, _ = split_documents(read_documents(small_corpus))
    return train_tokenizer(train, 512)


@pytest.mark.parametrize("text", ["héllo wörld — «ça va?»", "日本語のテキスト", "emoji 🚀🙂 and tabs\t\tand\r\nCRLF",
                                  "  leading spaces", "ünïcödé\u200bzero-width", "\x00\x7f bytes"])
def test_tokenizer_round_trips_any_utf8(tok, text):
    assert tok.decode(tok.encode(text).ids) == text


def test_tokenizer_has_requested_vocab(tok):
    assert tok.get_vocab_size() == 512


def test_split_is_deterministic_and_disjoint(small_corpus):
    docs = read_documents(small_corpus)
    a, b = split_documents(docs), split_documents(docs)
    assert a == b
    train, val = a
    assert train and val and not set(train) & set(val)


def test_checkpoint_round_trip(tmp_path, tok):
    model = CoSMoE(tiny_config(expert_kind="wd")).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, tok.to_str(), {"val_ppl": 1.0})
    raw = torch.load(path, weights_only=True)  # plain containers only
    assert set(raw) == {"config", "state_dict", "tokenizer", "meta"}
    loaded, tok2, ckpt = load_model(path)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert tok2.encode("round trip").ids == tok.encode("round trip").ids
    assert ckpt["meta"]["val_ppl"] == 1.0


def test_checkpoint_in_16_bit_is_close(tmp_path, tok):
    model = CoSMoE(tiny_config()).eval()
    save_checkpoint(tmp_path / "m16.pt", model, tok.to_str(), {}, dtype=torch.float16)
    ckpt = load_checkpoint(tmp_path / "m16.pt")
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values())
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        assert torch.allclose(model(x)[0], build_model(ckpt)(x)[0], atol=1e-2)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable cosmoe checkpoint"):
        load_checkpoint(bad)


def test_foreign_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a cosmoe checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint_cli_error_is_one_line(tmp_path, tok):
    good = tmp_path / "m.pt"
    save_checkpoint(good, CoSMoE(tiny_config()), tok.to_str(), {})
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    r = subprocess.run([sys.executable, "-m", "cosmoe_edge.model.generate", str(bad), "--prompt", "hi"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a readable cosmoe checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
