"""The edge runtime: runs an artifact written by edge-export, loading experts lazily under a memory
budget. Needs numpy and a backend (onnxruntime, or executorch's runtime); never torch for the onnx
path, never the training code.

    from cosmoe_edge.runtime import RunOptions, run
    report = run("artifact", RunOptions(prompt="The list type is", backend="onnx", memory_budget="25%"))
"""

from cosmoe_edge.errors import ArtifactError, EdgeError, RequestError
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.options import RunOptions
from cosmoe_edge.runtime.run import run

__all__ = ["ArtifactError", "EdgeError", "Engine", "RequestError", "RunOptions", "run"]
