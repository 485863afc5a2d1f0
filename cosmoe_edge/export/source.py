"""The checkpoint as the exporter reads it: mapped, not loaded, and one part at a time (an expert, a
layer program, the head, the embedding), so that the memory of an export follows its largest part and
not the whole model. Each part is built in fp32 from exactly the tensors it needs; the values are those
of `load_model(path)` (fp16 checkpoints widen to fp32 the same way), so the programs are the same.

Open a Source per task and close it after: pages of a mapped file count in RSS for as long as the
mapping lives, so a long-lived mapping would grow to the whole checkpoint.
"""

from pathlib import Path

import torch
from torch import nn

from cosmoe_edge.errors import CheckpointError
from cosmoe_edge.export.programs import HeadProgram, LayerProgram, PeerLayerProgram
from cosmoe_edge.model.checkpoint import load_checkpoint
from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.model import Block, SwiGLU
from cosmoe_edge.model.tokenizer import load_tokenizer

POOLS = ("ffn.experts.", "ffn.w_in.", "ffn.w_out.")  # what a layer program leaves to the runtime


class Source:
    def __init__(self, path):
        self.path = Path(path)
        ckpt = load_checkpoint(self.path, mmap=True)
        self.cfg = ModelConfig.from_dict(ckpt["config"])
        self.tokenizer_json, self.meta = ckpt["tokenizer"], ckpt["meta"]
        self._state = ckpt["state_dict"]

    @property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_json)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """fp32 copies of the tensors under `prefix` (names without it)."""
        found = {k[len(prefix):]: v.float().clone() for k, v in self._state.items() if k.startswith(prefix)}
        if not found:
            raise CheckpointError(f"{self.path}: no weights under {prefix!r}")
        return found

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self._state:
            raise CheckpointError(f"{self.path}: missing weight {name!r}")
        return self._state[name].float().clone()

    def expert(self, layer: int, expert: int) -> nn.Module:
        cfg = self.cfg
        with torch.device("meta"):
            module = SwiGLU(cfg.dim, cfg.expert_hidden, cfg.wd_rank if cfg.expert_kind == "wd" else 0)
        load(module, self.tensors(f"layers.{layer}.ffn.experts.{expert}."))
        return module.requires_grad_(False).eval()

    def block(self, layer: int, experts: bool = False) -> Block:
        """Block `layer`; without `experts` its routed experts (or PEER pool) stay on the meta device (the
        layer program does not read them)."""
        with torch.device("meta"):
            block = Block(self.cfg, self.cfg.ffn_kinds[layer])
        prefix = f"layers.{layer}."
        names = [k[len(prefix):] for k in self._state if k.startswith(prefix)]
        wanted = {k: self.tensor(prefix + k) for k in names if experts or not k.startswith(POOLS)}
        if experts:
            load(block, wanted)
        else:
            block.load_state_dict(wanted, strict=False, assign=True)
        return block.requires_grad_(False).eval()

    def layer_program(self, layer: int) -> LayerProgram:
        program = PeerLayerProgram if self.cfg.ffn_kinds[layer] == "peer" else LayerProgram
        return program(self.block(layer))

    def peer_tables(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The PEER pool of `layer`: u (N, D) and v (N, D), fp32."""
        return self.tensor(f"layers.{layer}.ffn.w_in.weight"), self.tensor(f"layers.{layer}.ffn.w_out.weight")

    def head_program(self) -> HeadProgram:
        cfg = self.cfg
        weight = self.tensor("tok_emb.weight" if cfg.tie_embeddings else "lm_head.weight")
        norm = self.tensors("norm.")["weight"]
        return HeadProgram(norm, cfg.norm_eps, weight)

    def close(self):
        self._state = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(module: nn.Module, tensors: dict[str, torch.Tensor]):
    try:
        module.load_state_dict(tensors, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights do not match the config: {str(e).splitlines()[0]}") from None
