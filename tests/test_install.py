"""The runtime-only install: `pip install 'cosmoe-edge[onnx]'` into a fresh virtual environment brings no
torch, runs an artifact, and answers the commands whose extras it lacks with one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The list type is"


@pytest.fixture(scope="module")
def onnx_venv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("install")
    src = d / "src"  # a copy of what the distribution is built from, so the build leaves the checkout clean
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "CMakeLists.txt"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "native", src / "native")  # the native core's sources: built only beside executorch
    shutil.copytree(ROOT / "cosmoe_edge", src / "cosmoe_edge", ignore=shutil.ignore_patterns("__pycache__"))
    venv = d / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{src}[onnx]"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def test_onnx_extra_installs_no_torch_and_runs_an_artifact(onnx_venv, int4_artifact, tmp_path):
    python = onnx_venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    listed = subprocess.run([str(onnx_venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"onnxruntime", "numpy", "tokenizers", "cosmoe-edge"} <= names
    assert not names & {"torch", "executorch", "torchao", "onnx", "matplotlib"}, names

    report = tmp_path / "r.json"
    r = subprocess.run([str(onnx_venv / "bin" / "edge-run"), str(int4_artifact), "--prompt", PROMPT, "--backend",
                        "onnx", "--memory-budget", "50%", "--max-new-tokens", "8", "--report", str(report)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(PROMPT)
    rep = json.loads(report.read_text())
    assert rep["generated_tokens"] == 8 and rep["backend"] == "onnx" and rep["expert_misses"] > 0
    # the installed copy checks its reports against the schema file it carries
    check = subprocess.run([str(python), "-c", "import json, sys; from cosmoe_edge.runtime.report import problems; "
                            "print(problems(json.load(open(sys.argv[1]))))", str(report)], capture_output=True, text=True)
    assert check.stdout.strip() == "[]", check.stderr[-1000:]


@pytest.mark.parametrize("cmd,extra", [
    (["edge-export", "model.pt"], "export"), (["edge-train"], "train"), (["edge-carve", "model.pt"], "train"),
    (["edge-bench", "artifact"], "bench"),
    (["edge-convert", "model.pt", "--out", "x"], "hf"), (["edge-import", "model"], "hf"),
    (["edge-run", "ARTIFACT", "--prompt", "x", "--backend", "executorch"], "executorch"),
])
def test_missing_extras_are_named_in_one_line(onnx_venv, int4_artifact, cmd, extra):
    cmd = [str(int4_artifact) if c == "ARTIFACT" else c for c in cmd]
    r = subprocess.run([str(onnx_venv / "bin" / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-1000:]
    assert f"needs the '{extra}' extra" in r.stderr and f"cosmoe-edge[{extra}]" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
