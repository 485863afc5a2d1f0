"""One small interface over the two runtimes: load a program file, run a method on numpy arrays,
release it. Everything above this (the decode loop, the expert cache) is backend-neutral.

The onnx path imports onnxruntime and numpy only; torch is imported by the executorch path alone,
because executorch's Python runtime takes torch tensors.
"""

import contextlib
import logging
import os

import numpy as np

from cosmoe_edge.runtime.manifest import ArtifactError

_quiet_done = False


@contextlib.contextmanager
def silenced_stderr(force: bool = False):
    """ExecuTorch's C++ side (cpuinfo, XNNPACK init) and torchao's import write diagnostics to fd 2
    that mean nothing to a user; failures still reach us as exceptions. They come once per process,
    with the first import and program load, so later calls pass straight through."""
    global _quiet_done
    if _quiet_done and not force:
        yield
        return
    logging.disable(logging.WARNING)
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        logging.disable(logging.NOTSET)


class OnnxProgram:
    """An onnxruntime session. ONNX files have one entry point, so `method` is ignored."""

    def __init__(self, path, threads: int, expert: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if expert:  # a 3-matmul graph gains nothing from the full optimiser; loading is ~40% faster
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no arena: memory freed when an expert is dropped goes back to malloc (and from there
        # to the OS with malloc_trim) instead of staying reserved in a per-session arena
        so.enable_cpu_mem_arena = False
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad protobufs
            raise ArtifactError(f"cannot load {path.name}: corrupt or truncated ONNX program "
                                f"({str(e).splitlines()[0][:160]})", "corrupt_program") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, method: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.inputs, inputs, strict=True)))

    def release(self):
        self.session = None


class ExecuTorchProgram:
    """An ExecuTorch program (.pte, XNNPACK delegate) with the given methods loaded."""

    def __init__(self, path, methods: list[str]):
        try:
            with silenced_stderr():
                from executorch.runtime import Runtime, Verification

                self.program = Runtime.get().load_program(path, verification=Verification.Minimal)
                self.methods = {m: self.program.load_method(m) for m in methods}
            global _quiet_done
            _quiet_done = True  # XNNPACK and cpuinfo are initialised: later loads print nothing
        except Exception as e:
            raise ArtifactError(f"cannot load {path.name}: corrupt or truncated ExecuTorch program "
                                f"({str(e).splitlines()[0][:160]})", "corrupt_program") from None

    def run(self, method: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        outs = self.methods[method].execute([torch.from_numpy(a) for a in inputs])
        # outputs live in the method's planned memory, which its next call overwrites: copy them out
        return [o.numpy().copy() for o in outs]

    def release(self):
        self.methods = None
        self.program = None


def import_runtime(backend: str):
    """Import the backend's Python runtime. For executorch this imports torch: seconds, once per
    process, a fixed cost the report keeps apart from loading the artifact."""
    if backend == "executorch":
        with silenced_stderr(force=True):
            import executorch.runtime  # noqa: F401
            import torch  # noqa: F401
    else:
        import onnxruntime  # noqa: F401


def open_program(backend: str, path, methods: list[str], threads: int = 1, expert: bool = False):
    if backend == "onnx":
        return OnnxProgram(path, threads, expert)
    return ExecuTorchProgram(path, methods)
