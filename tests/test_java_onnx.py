"""The Java core (what the Android app runs) with its ONNX backend (android_demo/onnx, onnxruntime's Java API) on
the shipped model's real artifact, on this machine's JVM, against the Python runtime: same tokens, same cache
events, a report that follows the shared schema. The Java API is onnxruntime 1.17.0 (scripts/fetch_ort_java.sh:
no Maven here), Python's is 1.32: their fp32 kernels agree on every routing decision here, so fp32 holds tokens
and cache events exactly. Their int4 kernels (accuracy level 4 arithmetic) can move a near-tie in the router, and
the shipped model's sticky rule carries a changed choice on to the next tokens (on the BlES model before it, one
decision of 408 differed and the text stayed the same; on the sticky model the texts part after 12 tokens), so
int4 holds the start of the text and a well-formed report, and the budget must bite."""

import json
import subprocess
from pathlib import Path

import pytest

from cosmoe_edge.runtime.report import problems

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The Python tutorial"
TOKENS = 40


def javac(out: Path, classpath: str, sources: list[Path]):
    subprocess.run(["javac", "--release", "8", "-encoding", "UTF-8", "-nowarn", "-cp", classpath, "-d", str(out),
                    *map(str, sources)], check=True)


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory) -> str:
    fetched = subprocess.run(["bash", str(ROOT / "scripts/fetch_ort_java.sh")], capture_output=True, text=True)
    if fetched.returncode:  # not a skip: without it nothing checks the Java engine on a real artifact
        pytest.fail(f"onnxruntime's Java API could not be fetched: {fetched.stderr.strip()}")
    ort = fetched.stdout.strip().splitlines()[-1]
    build = tmp_path_factory.mktemp("java")
    gson = "/usr/share/java/gson.jar"
    javac(build / "core", gson, sorted((ROOT / "android_demo/core/src/main/java").rglob("*.java")))
    javac(build / "onnx", f"{gson}:{build / 'core'}:{ort}", sorted((ROOT / "android_demo/onnx/src").rglob("*.java")))
    return f"{gson}:{build / 'core'}:{build / 'onnx'}:{ort}"


@pytest.fixture(scope="module", params=["int4", "fp32"])
def shipped_onnx(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"shipped-{request.param}") / "artifact"
    # onnxruntime 1.17 runs 4-bit MatMulNBits only: the head in int4 too (the default would be int8)
    head = ["--head-quant", "int4"] if request.param == "int4" else []
    subprocess.run([str(ROOT / ".venv/bin/edge-export"), str(ROOT / "models/cosmoe-default.pt"), "--quant",
                    request.param, *head, "--backend", "onnx", "--no-verify", "--out", str(out)], check=True,
                   capture_output=True)
    return request.param, out


def python_report(artifact: Path, budget: str, tmp: Path) -> dict:
    subprocess.run([str(ROOT / ".venv/bin/edge-run"), str(artifact), "--backend", "onnx", "--prompt", PROMPT,
                    "--max-new-tokens", str(TOKENS), "--memory-budget", budget, "--report", str(tmp / "py.json")],
                   check=True, capture_output=True)
    return json.loads((tmp / "py.json").read_text())


def java_report(classpath: str, artifact: Path, budget: str) -> dict:
    r = subprocess.run(["java", "-cp", classpath, "org.cosmoe.edge.onnx.OnnxEdgeRun", str(artifact), PROMPT,
                        str(TOKENS), budget], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("budget", ["all", "25%"])
def test_java_engine_runs_the_real_onnx_artifact_as_python_does(java_classpath, shipped_onnx, budget, tmp_path):
    scheme, artifact = shipped_onnx
    java = java_report(java_classpath, artifact, budget)
    py = python_report(artifact, budget, tmp_path)
    assert problems(java) == [], problems(java)
    assert java["generated_tokens"] == py["generated_tokens"] == TOKENS
    assert java["memory_budget_bytes"] == py["memory_budget_bytes"]
    if scheme == "fp32":
        assert java["text"] == py["text"]  # greedy: the same tokens
        for key in ("expert_hits", "expert_misses", "expert_evictions", "expert_loads"):
            assert java[key] == py[key], (key, java[key], py[key])
    else:  # see the module's docstring
        assert java["text"][:40] == py["text"][:40], (java["text"], py["text"])
    if budget != "all":
        assert java["expert_evictions"] > 0  # the budget did bite
