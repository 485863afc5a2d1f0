"""cosmoe-edge: model.pt -> export -> artifact/ -> runtime.

  model    the CoSMoE model, its training, tokenizer and checkpoint format (torch)
  export   model.pt -> artifact/: a backbone plus one program per expert, per backend
  runtime  runs an artifact with experts loaded lazily under a memory budget (no torch on the ONNX path)
  bench    fresh-process benchmarks, plots and device estimates

Nothing is imported here: `import cosmoe_edge.runtime` must work in an install without torch.
"""
