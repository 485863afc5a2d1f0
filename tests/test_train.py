import os
import re
import socket
import subprocess
import sys

import torch

from cosmoe_edge.model.checkpoint import load_checkpoint
from cosmoe_edge.model.train import TrainOptions, run
from tests.conftest import tiny_config

FAST = dict(batch_size=8, seq_len=64, eval_windows=8, warmup=10)


def test_loss_falls_on_short_run(tmp_path, small_corpus):
    meta = run(tiny_config(), TrainOptions(steps=60, eval_every=20, lr=3e-3, **FAST), tmp_path / "m.pt",
               small_corpus, None, quiet=True)
    hist = meta["history"]
    assert hist[0]["step"] == 0 and [h["step"] for h in hist[1:]] == [20, 40, 60]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] - 0.8  # untrained: ln(512) = 6.24
    assert meta["val_ppl"] < 512  # better than a uniform guess over the vocabulary
    assert len(meta["switch_rate"]) == 2 and len(meta["expert_usage"][0]) == 4


def test_bles_lowers_switch_rate(tmp_path, small_corpus):
    opts = TrainOptions(steps=80, eval_every=80, lr=3e-3, **FAST)
    base = run(tiny_config(bles_weight=0.0), opts, tmp_path / "a.pt", small_corpus, None, quiet=True)
    bles = run(tiny_config(bles_weight=1.0), opts, tmp_path / "b.pt", small_corpus, None, quiet=True)
    # BlES exists to cut switches: it must at least halve the rate of the same run without it (measured
    # here: 0.018 against 0.36, a 20x cut; a changed seed moves either by a few points, not 2x)
    assert bles["switch_rate_mean"] < 0.5 * base["switch_rate_mean"], (bles["switch_rate_mean"],
                                                                       base["switch_rate_mean"])


def test_reuse_reward_lowers_switch_rate(tmp_path, small_corpus):
    opts = TrainOptions(steps=80, eval_every=80, lr=3e-3, **FAST)
    base = run(tiny_config(bles_weight=0.0), opts, tmp_path / "a.pt", small_corpus, None, quiet=True)
    reuse = run(tiny_config(bles_weight=0.0, reuse_weight=0.1, lb_scope="batch", router_z_weight=1e-3),
                TrainOptions(steps=80, eval_every=80, lr=3e-3, sticky_from=0.25, **FAST), tmp_path / "r.pt",
                small_corpus, None, quiet=True)
    assert reuse["switch_rate_mean"] < 0.7 * base["switch_rate_mean"], (reuse["switch_rate_mean"],
                                                                        base["switch_rate_mean"])


def test_resume_continues_exactly(tmp_path, small_corpus):
    torch.set_num_threads(1)
    opts = TrainOptions(steps=12, eval_every=100, **FAST)
    run(tiny_config(), opts, tmp_path / "full.pt", small_corpus, None, quiet=True)
    run(tiny_config(), TrainOptions(steps=6, eval_every=100, **FAST), tmp_path / "half.pt", small_corpus, None,
        quiet=True)
    run(tiny_config(), opts, tmp_path / "resumed.pt", small_corpus, tmp_path / "half.pt", quiet=True)
    a = load_checkpoint(tmp_path / "full.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "resumed.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cosmoe_edge.model.train", *args], capture_output=True, text=True, **kw)


def test_cli_errors_are_one_clear_line(tmp_path):
    r = _cli("--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 2 and "corpus not found" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--preset", "huge")
    assert r.returncode == 2 and "unknown preset" in r.stderr
    r = _cli("--top-k", "20", "--corpus", str(tmp_path))
    assert r.returncode == 2 and "top_k" in r.stderr
    assert not (tmp_path / "m.pt").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_end_with_identical_weights(tmp_path, small_corpus):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
         "-m", "cosmoe_edge.model.train", "--preset", "tiny", "--corpus", str(small_corpus), "--steps", "5",
         "--batch-size", "4", "--seq-len", "32", "--eval-windows", "4", "--quiet", "--out", str(tmp_path / "d.pt")],
        capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    digests = dict(re.findall(r"\[rank (\d)\] final weights digest (\w+)", r.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    assert load_checkpoint(tmp_path / "d.pt")["meta"]["options"]["world"] == 2
