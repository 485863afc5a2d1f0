import shutil
from pathlib import Path

import pytest
import torch

from cosmoe.config import PRESETS, ModelConfig
from cosmoe.data import find_corpus


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
