"""The console scripts. Each checks that its extra is installed before importing its command, so a
runtime-only install (`pip install 'cosmoe-edge[onnx]'`) answers `edge-export` with one line naming the
missing extra instead of a traceback."""

import importlib
import sys

from cosmoe_edge.errors import MissingExtra, require


def _launch(command: str, extra: str, modules: tuple[str, ...], module: str):
    try:
        require(command, extra, *modules)
    except MissingExtra as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(module).app()


def edge_train():
    _launch("edge-train", "train", ("torch",), "cosmoe_edge.model.train")


def edge_import():
    _launch("edge-import", "hf", ("torch", "transformers", "gguf", "accelerate"), "cosmoe_edge.model.import_cli")


def edge_carve():
    _launch("edge-carve", "train", ("torch", "lap"), "cosmoe_edge.model.carve_cli")


def edge_export():
    _launch("edge-export", "export", ("torch", "executorch", "onnx", "onnxruntime"), "cosmoe_edge.export.cli")


def edge_convert():
    _launch("edge-convert", "hf", ("torch", "safetensors", "gguf"), "cosmoe_edge.export.convert")


def edge_run():  # needs only the extra of the backend it is asked for, which the runtime checks itself
    from cosmoe_edge.runtime.cli import app

    app()


def edge_eval():  # like edge-run: the runtime checks the backend's extra itself
    from cosmoe_edge.runtime.eval_cli import app

    app()


def edge_prepare():  # the native core, built with the package; it says itself when it is not
    from cosmoe_edge.runtime.prepare_cli import app

    app()


def edge_bench():
    _launch("edge-bench", "bench", ("matplotlib", "yaml"), "cosmoe_edge.bench.cli")
