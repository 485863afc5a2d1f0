import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.manifest import FORMAT_VERSION, sha256_file

CLI = [sys.executable, "-m", "cosmoe_edge.export.cli"]


def manifest(artifact):
    return json.loads((artifact / "manifest.json").read_text())


def test_manifest_lists_every_expert_with_size_and_checksum(fp32_artifact, tiny_model):
    m = manifest(fp32_artifact)
    cfg = load_model(tiny_model)[0].cfg
    assert m["format_version"] == FORMAT_VERSION and set(m["backends"]) == {"executorch", "onnx"}
    for section in m["backends"].values():
        keys = [(e["layer"], e["expert"]) for e in section["experts"]]
        assert sorted(keys) == [(layer, e) for layer in range(cfg.n_layers) for e in range(cfg.num_experts)]
        assert len({e["path"] for e in section["experts"]}) == len(keys)  # one file per expert
        for entry in section["experts"] + section["backbone"]["files"]:
            path = fp32_artifact / entry["path"]
            assert path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
        # budgets are charged with what an expert measurably costs once loaded, never less than its file
        assert section["footprint"]["rss_per_file_byte"] > 0.5
        assert all(e["resident_bytes"] >= e["bytes"] for e in section["experts"])
    # ordinary files a user can copy or adb push, not the 0700/0600 of mkdtemp and safetensors
    umask = os.umask(0)
    os.umask(umask)
    for p in [fp32_artifact, *fp32_artifact.rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~umask, p


def test_fp32_export_verified_against_eager(fp32_artifact):
    v = manifest(fp32_artifact)["verification"]
    for backend in ("executorch", "onnx"):
        assert v[backend]["passed"], v[backend]
        assert v[backend]["greedy"]["greedy_identical"]
        assert v[backend]["greedy"]["max_logit_diff"] <= 1e-3
        assert v[backend]["heldout"]["top1_agreement"] == 1.0


def test_int4_export_within_goal_and_fully_delegated(int4_artifact):
    m = manifest(int4_artifact)
    for backend in ("executorch", "onnx"):
        assert m["verification"][backend]["heldout"]["ppl_change"] <= 0.05
    d = m["backends"]["executorch"]["delegation"]
    assert d["portable_ops"] == {} and max(d["backbone_delegate_calls"].values()) == 1
    assert m["backends"]["onnx"]["matmulnbits"]["experts_ok"]


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
@pytest.mark.parametrize("scheme,tol", [("fp32", 1e-5), ("int4", 0.25)])
def test_one_expert_file_runs_alone_and_matches_eager(request, tiny_model, backend, scheme, tol):
    artifact = request.getfixturevalue(f"{scheme}_artifact")
    entry = next(e for e in manifest(artifact)["backends"][backend]["experts"] if e["layer"] == 1 and e["expert"] == 2)
    program = open_program(backend, artifact / entry["path"], ["forward"])
    expert = load_model(tiny_model)[0].layers[1].ffn.experts[2]
    for n in (1, 5, 32):
        x = torch.randn(n, expert.w1.in_features)
        want = expert(x).detach().numpy()
        err = np.abs(program.run("forward", [x.numpy()])[0] - want).max()
        assert err <= (tol if scheme == "fp32" else tol * np.abs(want).max()), (n, err)


def test_int4_files_are_four_bit(int4_artifact, fp32_artifact, tiny_model):
    expert = load_model(tiny_model)[0].layers[0].ffn.experts[0]
    params = sum(p.numel() for p in expert.parameters())
    for backend in ("executorch", "onnx"):
        size = manifest(int4_artifact)["backends"][backend]["experts"][0]["bytes"]
        # the program's framing (graph, names, headers): what the same expert's fp32 file holds beyond its weights
        framing = manifest(fp32_artifact)["backends"][backend]["experts"][0]["bytes"] - 4 * params
        # 4 bits a weight, one scale per group of 32 (at most fp32), and the framing; the int4 graph names a
        # scale tensor per matrix more, measured at 1.05x (executorch) and 0.66x (onnx) the fp32 framing
        assert params / 2 < size < params / 2 + params / 32 * 4 + 1.5 * framing, (backend, size, params, framing)


def test_head_scheme_follows_its_measured_cost():
    from cosmoe_edge.errors import ExportError
    from cosmoe_edge.export.quantize import HEAD_INT4_TOLERANCE, choose_head

    within, over = 100 * (1 + HEAD_INT4_TOLERANCE * 0.9), 100 * (1 + HEAD_INT4_TOLERANCE * 1.1)
    assert choose_head("int4", "auto", {"fp32": 100.0, "executorch": within, "onnx": within}) == "int4"
    assert choose_head("int4", "auto", {"fp32": 100.0, "executorch": within, "onnx": over}) == "int8"
    assert choose_head("int4", "auto", {"fp32": 100.0, "onnx": within}) == "int4"
    assert choose_head("int4", "int4", None) == "int4" and choose_head("int4", "int8", None) == "int8"
    assert choose_head("int8", "auto", None) == "int8" and choose_head("fp32", "auto", None) == "fp32"
    with pytest.raises(ExportError, match="int4 only"):
        choose_head("int8", "int4", None)


def test_auto_head_choice_recorded(int4_artifact):
    q = manifest(int4_artifact)["quant"]
    c = q["head_choice"]
    assert c["requested"] == "auto" and c["tokens"] > 0 and {"executorch", "onnx"} <= c.keys()
    within = all(c[b] <= c["fp32"] * (1 + c["tolerance"]) for b in ("executorch", "onnx"))
    assert q["head"] == ("int4-per-group" if within else "int8-per-channel")


def test_int4_head_trial_is_the_built_head(tmp_path, tiny_model):
    """The auto choice's ONNX trial computes what the exported int4 head program computes, and an int4
    head is what --head-quant int4 builds (4-bit, verified through the runtime)."""
    import onnx

    from cosmoe_edge.export.artifact import export_artifact
    from cosmoe_edge.export.source import Source
    from cosmoe_edge.export.verify import matmulnbits_int4

    out = tmp_path / "a"
    m = export_artifact(tiny_model, out, "int4", 32, ["onnx"], jobs=1, verify=True, head_quant="int4")
    assert m["quant"]["head"] == "int4-per-group" and "head_choice" not in m["quant"]
    assert m["verification"]["onnx"]["passed"]
    path = out / m["backends"]["onnx"]["backbone"]["parts"]["head"]["path"]
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 1 and next(a.i for a in nodes[0].attribute if a.name == "bits") == 4
    with Source(tiny_model) as source:
        head = source.head_program()
    h = torch.randn(7, head.lm_head.in_features)
    built = open_program("onnx", path, ["main"]).run("main", [h.numpy()])[0]
    with torch.no_grad():
        trial = matmulnbits_int4(head.lm_head.weight.numpy(), 32, head.norm(h).numpy())
    assert np.abs(built - trial).max() <= 1e-4 * np.abs(trial).max()


def _run(*args, cwd, **kw):
    # in a scratch folder: the default --out (artifact/) must not be the repository's own
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, **kw)


def test_export_errors_are_one_clear_line(tmp_path, tiny_model):
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_text("hello")
    a_file = tmp_path / "file"
    a_file.write_text("")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("user data")
    cases = [
        ((tmp_path / "missing.pt",), "model not found"),
        ((not_ckpt,), "not a readable cosmoe checkpoint"),
        ((tiny_model, "--quant", "int3"), "unknown --quant"),
        ((tiny_model, "--backend", "tflite"), "unknown --backend"),
        ((tiny_model, "--group-size", "64"), "does not divide"),
        ((tiny_model, "--group-size", "16"), "multiple of 32"),
        ((tiny_model, "--head-quant", "int2"), "unknown --head-quant"),
        ((tiny_model, "--quant", "int8", "--head-quant", "int4"), "applies to --quant int4 only"),
        ((tiny_model, "--out", full), "pass --force"),
        ((tiny_model, "--out", a_file / "sub", "--backend", "onnx", "--no-verify"), "cannot write"),
    ]
    for args, message in cases:
        r = _run(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr[-500:])
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-500:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (full / "keep.txt").read_text() == "user data"


def test_interrupted_export_writes_nothing_and_keeps_its_parts(tmp_path, tiny_model):
    out = tmp_path / "art"
    # SIGINT back to its default in the child: a test run started in the background (`cmd &`) inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt
    p = subprocess.Popen([*CLI, str(tiny_model), "--out", str(out), "--jobs", "1"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupt once the first program files exist: the export is then in the middle of writing its parts
    deadline = time.monotonic() + 120
    while p.poll() is None and not list(tmp_path.glob(".art.partial/*/*/*.*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert p.poll() is None, "export finished (or failed) before it could be interrupted"
    assert list(tmp_path.glob(".art.partial/*/*/*.*")), "no program file written within 120 s"
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)  # reads stderr while waiting: a full pipe cannot block the child
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        pytest.fail(f"export still running 60 s after Ctrl-C; its stderr ends: {err[-2000:]}")
    assert p.returncode == 130, err[-2000:]
    assert "interrupted; nothing was written" in err and "--resume continues" in err, err[-2000:]
    assert not out.exists()
    # what was finished stays for --resume (test_export_scale.py resumes a killed export)
    assert [p.name for p in tmp_path.iterdir()] == [".art.partial"]
    assert not list(tmp_path.glob(".art.partial/**/*.tmp"))


def test_qkv_biases_export_on_both_backends(tmp_path, tiny_model):
    """Qwen2-style biases on q, k, v (config.attn_bias, edge-import) survive export: fp32 greedy tokens and
    logits equal the eager model's, int4 within the perplexity goal, on both backends."""
    from cosmoe_edge.export.artifact import export_artifact
    from cosmoe_edge.model.checkpoint import save_checkpoint
    from cosmoe_edge.model.model import CoSMoE
    from tests.conftest import tiny_config

    model = CoSMoE(tiny_config(attn_bias=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    save_checkpoint(tmp_path / "b.pt", model, torch.load(tiny_model, weights_only=True)["tokenizer"], {})
    for scheme in ("fp32", "int4"):
        m = export_artifact(tmp_path / "b.pt", tmp_path / scheme, scheme, 32, ["executorch", "onnx"], jobs=2,
                            verify=True)
        for backend in ("executorch", "onnx"):
            assert m["verification"][backend]["passed"], (scheme, backend, m["verification"][backend])
