"""One small interface over the two runtimes: load a program file, run a method on numpy arrays,
release it. Everything above this (the decode loop, the expert cache) is backend-neutral.

The onnx path imports onnxruntime and numpy only; torch is imported by the executorch path alone,
because executorch's Python runtime takes torch tensors.
"""

import contextlib
import json
import logging
import math
import mmap
import os
import struct

import numpy as np

from cosmoe_edge.errors import ArtifactError, require

_devnull = None
_initialised = False  # ExecuTorch has loaded a program: cpuinfo and XNNPACK have said their piece


@contextlib.contextmanager
def silenced_stderr(python_logging: bool = False):
    """ExecuTorch's C++ side (cpuinfo and XNNPACK at their first use, a failed verification) writes
    diagnostics to fd 2 that mean nothing to a user; failures still reach us as exceptions, which say it
    in one line. With python_logging, Python's logging is held below ERROR too (torchao's import): ~0.1 ms
    with torch's 400 loggers. edge-run holds fd 2 for the whole run; the library itself only around the
    import and the first program load (even the redirect's system calls measured ~25 us per load in
    place). Nests: each exit restores what fd 2 was at its entry."""
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_WRONLY)
    if python_logging:
        logging.disable(logging.WARNING)
    saved = os.dup(2)
    os.dup2(_devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if python_logging:
            logging.disable(logging.NOTSET)


def session_options(threads: int, expert: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if expert:  # a 3-matmul graph gains nothing from the full optimiser; loading is ~40% faster
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads > 1 and _ort_pool[0] == threads:
        # one process-wide pool: a pool per session (dozens of experts) leaves that many threads
        # spinning after each call, and on a 2-core machine decode fell to 6 tok/s from 105
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # no arena: memory freed when an expert is dropped goes back to malloc (and from there
    # to the OS with malloc_trim) instead of staying reserved in a per-session arena
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    return so


class OnnxProgram:
    """An onnxruntime session. ONNX files have one entry point, so `method` is ignored."""

    def __init__(self, path, threads: int, expert: bool = False):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, expert),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad protobufs
            raise ArtifactError(f"cannot load {path.name}: corrupt or truncated ONNX program "
                                f"({str(e).splitlines()[0][:160]})", "corrupt_program") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name = path.name

    def run(self, method: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(None, dict(zip(self.inputs, inputs, strict=True)))
        except Exception as e:  # a program that loads but cannot run: damaged, or not what the manifest says
            raise failed_run(self.name, e) from None

    def release(self):
        self.session = None


def safetensors_layout(buf) -> list:
    """(name, dtype, offset, count, shape) of each array in a safetensors file (8-byte header length,
    JSON header, data), checked against the file's size."""
    n = struct.unpack_from("<Q", buf, 0)[0]
    header = json.loads(bytes(buf[8:8 + n]))
    layout = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(OnnxExpertWeights.DTYPES[t["dtype"]])
        start, end = t["data_offsets"]
        count = (end - start) // dtype.itemsize
        if count != math.prod(t["shape"]) or 8 + n + end > len(buf):
            raise ValueError(f"{name} does not fit the file")
        layout.append((name, dtype, 8 + n + start, count, tuple(t["shape"])))
    return layout


class OnnxExpertWeights:
    """An ONNX expert in the weights form (export/expert_weights.py): its safetensors file mapped read-only
    and its arrays fed, without a copy, to the layer shape's shared slot session at every call. Loading it
    costs mapping the file; its pages are read on first use and leave with the mapping when released."""

    DTYPES = {"I8": np.int8, "F32": np.float32}

    def __init__(self, path, slot: OnnxProgram, layout: list | None = None):
        """`layout`: the file's arrays as (name, dtype, offset, count, shape), from an earlier load of the
        same unchanged file (the store keeps it), so a reload skips parsing the header."""
        self.name, self.slot = path.name, slot
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.layout = layout if layout is not None else safetensors_layout(self._map)
            self.feeds = {name: np.frombuffer(self._map, dtype, count, offset).reshape(shape)
                          for name, dtype, offset, count, shape in self.layout}
        except (struct.error, ValueError, KeyError, TypeError) as e:
            self.release()
            raise ArtifactError(f"cannot load {self.name}: corrupt or truncated expert weights ({e})",
                                "corrupt_program") from None
        missing = layout is None and set(slot.inputs) - {"x"} - set(self.feeds)  # a known layout passed before
        if missing:
            self.release()
            raise ArtifactError(f"cannot load {self.name}: it lacks {', '.join(sorted(missing))}", "corrupt_program")
        self.session = None  # its own session, once promoted

    @property
    def promotable(self) -> bool:
        return self.session is None

    def run(self, method: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            if self.session is not None:
                return self.session.run(None, {"x": inputs[0]})
            return self.slot.session.run(None, {"x": inputs[0], **self.feeds})
        except Exception as e:
            raise failed_run(self.name, e) from None

    def promote(self, const_graph: bytes, threads: int):
        """Give the expert a session of its own: the const graph with its weights as initializers, which
        onnxruntime copies and prepacks, so calls run ~1.7x faster with bit-identical outputs (the same
        kernels); the mapped pages are then handed back to the OS."""
        import onnxruntime as ort

        so = session_options(threads, expert=True)
        names = list(self.feeds)
        so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(self.feeds[n]) for n in names])
        try:
            self.session = ort.InferenceSession(const_graph, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ArtifactError(f"cannot give {self.name} a session: {str(e).splitlines()[0][:160]}",
                                "corrupt_program") from None
        self._map.madvise(mmap.MADV_DONTNEED)  # onnxruntime holds its own copy; the file pages can go

    def release(self):
        self.session = None
        self.feeds = None  # the arrays are views of the mapping: drop them before closing it
        self._map.close()


def failed_run(name: str, e: Exception) -> ArtifactError:
    return ArtifactError(f"{name} failed to run: corrupt program or wrong inputs ({str(e).splitlines()[0][:160]})",
                         "program_failed")


def check_pte_header(path) -> None:
    """Refuse a .pte whose header does not describe a program of this file's size. ExecuTorch 1.5.1
    aborts the whole process (a C++ exception through pybind11) on some damaged headers, e.g. a file
    identifier that is not UTF-8, and only the full flatbuffer check (Verification.InternalConsistency,
    a few us) keeps damaged table offsets from crashing it. Layout: root offset u32, identifier "ET12",
    then the extended header "eh00", its length u32, program size u64, segment offset u64 and
    segment size u64 (all little-endian)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, head = os.fstat(fd).st_size, os.pread(fd, 40, 0)
    finally:
        os.close(fd)

    def bad(why):
        return ArtifactError(f"cannot load {os.path.basename(path)}: corrupt or truncated ExecuTorch program ({why})",
                             "corrupt_program")

    if len(head) < 40:
        raise bad("shorter than its header")
    if head[4:8] != b"ET12":
        raise bad("file identifier is not ET12")
    if head[8:12] != b"eh00":
        raise bad("no extended header")
    root, = struct.unpack_from("<I", head, 0)
    header_len, program_size, segment_base = struct.unpack_from("<IQQ", head, 12)
    segment_size = struct.unpack_from("<Q", head, 32)[0] if header_len >= 32 else 0
    if header_len < 24 or not 8 + header_len <= root < program_size <= size:
        raise bad("header sizes do not fit the file")
    if segment_base and not program_size <= segment_base <= segment_base + segment_size <= size:
        raise bad("segment table does not fit the file")


class ExecuTorchProgram:
    """An ExecuTorch program (.pte, XNNPACK delegate) with the given methods loaded. `check_header`
    may be off only where a sha256 check has vouched for the file's bytes."""

    def __init__(self, path, methods: list[str], check_header: bool = True):
        global _initialised
        if check_header:
            check_pte_header(path)
        self.name = path.name
        try:
            with silenced_stderr() if not _initialised else contextlib.nullcontext():
                from executorch.runtime import Runtime, Verification

                self.program = Runtime.get().load_program(path, verification=Verification.InternalConsistency)
                self.methods = {m: self.program.load_method(m) for m in methods}
            _initialised = True
        except Exception as e:
            raise ArtifactError(f"cannot load {path.name}: corrupt or truncated ExecuTorch program "
                                f"({str(e).splitlines()[0][:160]})", "corrupt_program") from None

    def run(self, method: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        try:
            outs = self.methods[method].execute([torch.from_numpy(a) for a in inputs])
        except Exception as e:
            raise failed_run(self.name, e) from None
        # outputs live in the method's planned memory, which its next call overwrites: copy them out
        return [o.numpy().copy() for o in outs]

    def release(self):
        self.methods = None
        self.program = None


def import_runtime(backend: str, threads: int = 1):
    """Import the backend's Python runtime and size its thread pool. For executorch this imports
    torch: seconds, once per process, a fixed cost the report keeps apart from loading the artifact."""
    if backend == "executorch":
        require("edge-run --backend executorch", "executorch", "torch", "executorch")
        with silenced_stderr(python_logging=True):  # importing, and creating or resetting the pool, log
            import executorch.runtime  # noqa: F401
            import torch  # noqa: F401
            from executorch.extension.pybindings.portable_lib import (
                _threadpool_get_thread_count,
                _unsafe_reset_threadpool,
            )

            if _threadpool_get_thread_count() != threads:
                _unsafe_reset_threadpool(threads)  # decode-sized matmuls run best on one core
    else:
        require("edge-run --backend onnx", "onnx", "onnxruntime")
        from onnxruntime.capi import _pybind_state

        if threads > 1 and _ort_pool[0] is None:  # only before the first session creates the environment
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _ort_pool[0] = threads


_ort_pool = [None]  # the size of onnxruntime's process-wide thread pool, once set


def open_program(backend: str, path, methods: list[str], threads: int = 1, expert: bool = False,
                 sha_checked: bool = False):
    """`sha_checked`: the file's sha256 was checked (now, or before with the file unchanged since), so its
    header needs no check of its own (~30 us of a ~1 ms ExecuTorch load)."""
    if backend == "onnx":
        return OnnxProgram(path, threads, expert)
    return ExecuTorchProgram(path, methods, check_header=not sha_checked)
