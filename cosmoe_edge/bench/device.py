"""Planning beyond this machine: measure this machine's memory and storage bandwidth and int4
compute rate, and estimate decode speed on a device profile from a measured run.

The estimate (also in docs/BENCHMARKS.md), per generated token, with r = host_int4_gops / device_int4_gops:
  t_device = t_compute * r
           + misses_per_token * (t_load_cpu * r + device_read_latency + expert_bytes / device_read_bandwidth)
where t_compute is this machine's time per token with every expert resident (no loads), t_load_cpu
the CPU time to turn an expert's bytes into a runnable program here (measured load time minus the
read), and the miss figures come from the run at that budget. It is an estimate: it ignores the
device's memory pressure, thermal throttling and the phone's own runtime overheads.
"""

import logging
import mmap
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Device:
    name: str
    read_gbps: float  # sustained read bandwidth of storage, GB/s
    read_latency_us: float  # fixed cost of one expert read (open, first block)
    int4_gops: float  # int4 (8-bit activations) matrix-vector rate, 1e9 multiply-adds/s

    def to_dict(self):
        return asdict(self)


# Assumptions from public spec sheets, not measurements: UFS 3.1 sequential reads ~1.7-2.1 GB/s,
# UFS 4.0 ~4 GB/s, a PCIe 4 NVMe ~3.5-7 GB/s; phone big cores' int8-dot GEMV tens of GOPS.
PROFILES = {
    "phone-ufs3": Device("phone-ufs3", read_gbps=1.7, read_latency_us=150, int4_gops=25),
    "phone-ufs4": Device("phone-ufs4", read_gbps=4.0, read_latency_us=80, int4_gops=50),
    "laptop-nvme": Device("laptop-nvme", read_gbps=3.5, read_latency_us=60, int4_gops=120),
}


def load_profile(name: str) -> Device:
    if name in PROFILES:
        return PROFILES[name]
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"unknown device {name!r}: use {', '.join(PROFILES)} or a YAML file")
    import yaml

    d = yaml.safe_load(path.read_text()) or {}
    try:
        return Device(d.get("name", path.stem), float(d["read_gbps"]), float(d["read_latency_us"]),
                      float(d["int4_gops"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: needs read_gbps, read_latency_us and int4_gops ({e})") from None


def memory_bandwidth_gbps(mb: int = 256, repeats: int = 5) -> float:
    """Best of a few large array copies (read + write counted)."""
    a = np.ones(mb * 1024 * 1024 // 8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
    return best / 1e9


def storage_read_gbps(mb: int = 256, directory: str | None = None) -> float:
    """Sequential read with O_DIRECT (no page cache) of a temporary file, in 4 MiB blocks."""
    block = 4 * 1024 * 1024
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
        data = os.urandom(block)
        for _ in range(mb // 4):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
        name = f.name
    try:
        buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        try:
            t, total = time.perf_counter(), 0
            while n := os.readv(fd, [buf]):
                total += n
            return total / (time.perf_counter() - t) / 1e9
        finally:
            os.close(fd)
    finally:
        os.unlink(name)


def int4_gops(n: int = 4096, repeats: int = 50) -> float:
    """onnxruntime MatMulNBits (4-bit weights, 8-bit activations), one token x an n x n matrix,
    single thread: the decode-time kernel this runtime uses."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)  # it logs each matmul at INFO
    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32) * 0.02
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(q.model.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = {"x": np.ones((1, n), np.float32)}
    for _ in range(5):
        sess.run(None, x)
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, x)
    return n * n * repeats / (time.perf_counter() - t) / 1e9


def estimate_tokens_per_s(device: Device, host_gops: float, compute_s_per_token: float, misses_per_token: float,
                          expert_bytes: float, load_cpu_s: float) -> float:
    r = host_gops / device.int4_gops
    t = compute_s_per_token * r
    t += misses_per_token * (load_cpu_s * r + device.read_latency_us * 1e-6 + expert_bytes / (device.read_gbps * 1e9))
    return 1.0 / t
