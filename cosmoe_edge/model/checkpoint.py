"""model.pt: {"config": dict, "state_dict": tensors, "tokenizer": JSON str, "meta": dict}
(+ "train_state" while training). Plain containers only, so torch.load(weights_only=True) reads it
and no class path of this code base is baked into the file."""

import os
import tempfile
from pathlib import Path

import torch

from cosmoe_edge.errors import CheckpointError
from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.model import CoSMoE
from cosmoe_edge.model.tokenizer import load_tokenizer

REQUIRED_KEYS = ("config", "state_dict", "tokenizer", "meta")


def save_checkpoint(path, model: CoSMoE, tokenizer_json: str, meta: dict, train_state: dict | None = None,
                    dtype: torch.dtype | None = None):
    """Atomic: written to a temporary file beside `path`, then renamed over it."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    ckpt = {"config": model.cfg.to_dict(), "state_dict": state, "tokenizer": tokenizer_json, "meta": meta}
    if train_state is not None:
        ckpt["train_state"] = train_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, mmap: bool = False) -> dict:
    """mmap: tensors stay in the file and are read as they are touched (the exporter reads one part at
    a time, so its memory follows the part and not the model)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # zip/pickle errors carry no useful detail for a user
        raise CheckpointError(f"{path} is not a readable cosmoe checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a cosmoe checkpoint (needs keys {', '.join(REQUIRED_KEYS)})")
    try:
        ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {e}") from None
    return ckpt


def build_model(ckpt: dict, dtype: torch.dtype = torch.float32) -> CoSMoE:
    model = CoSMoE(ModelConfig.from_dict(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"weights do not match the config: {str(e).splitlines()[0]}") from None
    return model.to(dtype).eval()


def load_model(path, dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer, raw checkpoint dict)."""
    ckpt = load_checkpoint(path)
    return build_model(ckpt, dtype), load_tokenizer(ckpt["tokenizer"]), ckpt
