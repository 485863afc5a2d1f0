"""The export at scale: parts built from the mapped checkpoint, lowered once per shape and templated
after, in workers bounded by memory, resumable after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from cosmoe_edge.export import build, schedule
from cosmoe_edge.export.source import Source
from cosmoe_edge.export.templates import PteTemplate
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.runtime.manifest import sha256_file
from cosmoe_edge.runtime.metrics import run_with_tree_peak

CLI = [sys.executable, "-m", "cosmoe_edge.export.cli"]


def files_of(artifact):
    return {p.relative_to(artifact).as_posix(): sha256_file(p) for p in sorted(artifact.rglob("*"))
            if p.is_file() and p.name != "manifest.json" and ".export" not in p.parts}


def test_source_builds_parts_equal_to_the_loaded_model(tiny_model):
    model = load_model(tiny_model)[0]
    with Source(tiny_model) as src:
        expert = src.expert(1, 2)
        layer = src.layer_program(1)
        head = src.head_program()
    want = model.layers[1].ffn.experts[2].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in expert.state_dict().items())
    assert torch.equal(layer.wq.weight, model.layers[1].attn.wq.weight)
    assert torch.equal(layer.router.weight, model.layers[1].ffn.router.weight)
    assert torch.equal(head.lm_head.weight, model.tok_emb.weight if model.lm_head is None else model.lm_head.weight)


def test_templated_parts_equal_lowered_ones(tmp_path, tiny_model, int4_artifact):
    """Every file the templated export wrote equals what lowering that part in full writes."""
    m = json.loads((int4_artifact / "manifest.json").read_text())
    assert all(s["built"]["template"] > 0 for s in m["backends"].values())  # templates were really used
    cfg = load_model(tiny_model)[0].cfg
    experts = [(layer, e) for layer in range(cfg.n_layers) for e in range(cfg.num_experts)]
    for backend in ("executorch", "onnx"):
        build.build_parts(str(tiny_model), backend, "int4", 32, str(tmp_path), "expert", experts)
    for rel, digest in files_of(tmp_path).items():
        assert digest == sha256_file(int4_artifact / rel), rel


def test_layer_template_and_its_fallback(tiny_model):
    """Layer programs hold fp32 norms as raw bytes, and ExecuTorch stores equal constants once: a layer
    whose constants are equal where the template's are not cannot come from the template."""
    with Source(tiny_model) as src:
        parts = [build.Part(src, "executorch", "int4", 32, "layer", (i,)) for i in (0, 1)]
    lowered = [p.lower()[0] for p in parts]
    template = PteTemplate.learn(lowered[0], parts[0].module)
    assert template is not None and any(not s.key_offsets for s in template.slots)  # raw slots placed
    assert template.render(parts[1].module) == lowered[1]
    with torch.no_grad():
        parts[1].module.attn_norm.weight.fill_(1.0)
        parts[1].module.ffn_norm.weight.fill_(1.0)
    assert template.render(parts[1].module) is None


def test_jobs_bounded_by_memory(monkeypatch, tiny_model):
    cfg = load_model(tiny_model)[0].cfg
    per = schedule.worker_estimate(cfg)
    monkeypatch.setattr(schedule, "available_memory", lambda: int(schedule.PARENT_RESERVE_BYTES + 2.5 * per))
    assert schedule.choose_jobs(8, cfg)[0] == 2
    assert "--jobs 8 lowered to 2" in schedule.choose_jobs(8, cfg)[1]
    assert schedule.choose_jobs(1, cfg) == (1, None)
    assert schedule.choose_jobs(None, cfg)[0] == min(os.cpu_count(), 2)
    monkeypatch.setattr(schedule, "available_memory", lambda: 0)
    assert schedule.choose_jobs(None, cfg)[0] == 1  # never zero workers


def test_resumed_export_after_a_kill_equals_an_uninterrupted_one(tmp_path, tiny_model, int4_artifact):
    out = tmp_path / "art"
    partial = tmp_path / ".art.partial"
    args = [*CLI, str(tiny_model), "--quant", "int4", "--out", str(out), "--jobs", "2"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while p.poll() is None and len(list(partial.glob("*/experts/*.pte"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.poll() is None, "export finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists() and partial.is_dir()

    r = subprocess.run([*args[:4], "--quant", "int8", *args[6:], "--resume"], capture_output=True, text=True)
    assert r.returncode == 2 and "made with another scheme" in r.stderr and "Traceback" not in r.stderr, r.stderr

    # resumed, with the memory of the exporter and its workers sampled throughout
    r, peak = run_with_tree_peak([*args, "--resume"], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["export"]["resumed_parts"] >= 3 and not partial.exists()
    assert not list(out.rglob(".export")) and not list(out.rglob("*.tmp"))
    assert files_of(out) == files_of(int4_artifact)
    ref = json.loads((int4_artifact / "manifest.json").read_text())
    same = lambda e: {k: v for k, v in e.items() if "resident" not in k}  # noqa: E731 (measured: RSS varies)
    for b in ("executorch", "onnx"):
        assert [same(e) for e in m["backends"][b]["experts"]] == [same(e) for e in ref["backends"][b]["experts"]]
        assert m["backends"][b]["backbone"] == ref["backends"][b]["backbone"]
    # Loose bound: two workers (~0.6 GB of torch, executorch and onnx each) and the exporter, verifying.
    # The tiny model is a few MB: a bound that follows the model's size would be tighter than noise.
    assert 0 < peak < 3.5e9, peak
    assert m["export"]["worker_peak_rss_bytes"] < 1.5e9
