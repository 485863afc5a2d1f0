import shutil
from pathlib import Path

import pytest
import torch

from cosmoe_edge.model.config import PRESETS, ModelConfig
from cosmoe_edge.model.data import find_corpus


def tiny_config(**kw) -> ModelConfig:
    return ModelConfig.from_dict(PRESETS["tiny"].to_dict() | kw)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A few real documents of the default corpus (Debian's python3.11-doc, installed by make setup)."""
    src = find_corpus() / "tutorial"
    dst = tmp_path_factory.mktemp("corpus")
    for p in sorted(src.glob("*.rst.txt"))[:8]:
        shutil.copy(p, dst / p.name)
    return dst


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, small_corpus) -> Path:
    """A tiny CoSMoE trained for a few steps on real text, so its routing is not arbitrary."""
    from cosmoe_edge.model.train import TrainOptions, run

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    run(tiny_config(bles_weight=0.5), TrainOptions(steps=40, batch_size=8, seq_len=64, eval_every=1000,
                                                   eval_windows=4, warmup=5, lr=3e-3),
        path, small_corpus, None, quiet=True)
    return path


def _export(tmp_path_factory, model: Path, scheme: str, backends=("executorch", "onnx")) -> Path:
    from cosmoe_edge.export.artifact import export_artifact

    out = tmp_path_factory.mktemp(f"artifact_{scheme}") / "artifact"
    export_artifact(model, out, scheme, 32, list(backends), jobs=2, verify=True)
    return out


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory, tiny_model) -> Path:
    return _export(tmp_path_factory, tiny_model, "fp32")


@pytest.fixture(scope="session")
def int4_artifact(tmp_path_factory, tiny_model) -> Path:
    return _export(tmp_path_factory, tiny_model, "int4")


@pytest.fixture(scope="session")
def int8_onnx_artifact(tmp_path_factory, tiny_model) -> Path:
    """ONNX experts in the weights form (export/expert_weights.py)."""
    return _export(tmp_path_factory, tiny_model, "int8", ["onnx"])


def _shipped(tmp_path_factory, backend: str) -> Path:
    """The shipped model exported for one backend as make_conformance.py's docstring says (int4 with an int8 head,
    no verify)."""
    from cosmoe_edge.export.artifact import export_artifact

    out = tmp_path_factory.mktemp(f"shipped-{backend}") / "artifact"
    export_artifact(Path(__file__).resolve().parents[1] / "models" / "cosmoe-default.pt", out, "int4", 32, [backend],
                    jobs=2, verify=False, head_quant="int8")
    return out


@pytest.fixture(scope="session")
def shipped_executorch_artifact(tmp_path_factory) -> Path:
    return _shipped(tmp_path_factory, "executorch")


@pytest.fixture(scope="session")
def shipped_onnx_artifact(tmp_path_factory) -> Path:
    """The shipped model's ONNX programs (int4 MatMulNBits): the native core's ONNX backend."""
    return _shipped(tmp_path_factory, "onnx")
