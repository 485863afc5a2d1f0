"""The edge runtime: runs an artifact written by edge-export, loading experts lazily under a
memory budget. Needs numpy and a backend (onnxruntime, or executorch's runtime); never torch for
the onnx path, never the training code."""
