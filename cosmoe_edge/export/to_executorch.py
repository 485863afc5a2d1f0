"""Lower programs to an ExecuTorch .pte with the XNNPACK delegate, and count what was delegated."""

from collections import Counter

import torch


def lower(methods: dict) -> tuple[bytes, dict]:
    """methods: {name: (module, example_inputs, dynamic_shapes)}, all written to one program.
    Returns the .pte bytes and a report: ops inside XNNPACK vs ops left to portable kernels,
    delegate calls per method, and the activation bytes the runtime plans for each method."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    with torch.no_grad():
        exported = {name: torch.export.export(mod, ex, dynamic_shapes=ds) for name, (mod, ex, ds) in methods.items()}
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    report = {"delegated_ops": 0, "portable_ops": Counter(), "delegate_calls": {}}
    for name in methods:
        gm = edge.exported_program(name).graph_module
        calls = 0
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            target = str(node.target)
            if "executorch_call_delegate" in target:
                calls += 1
                lowered = getattr(gm, node.args[0].target)
                report["delegated_ops"] += sum(
                    1 for n in lowered.original_module.graph.nodes if n.op == "call_function" and "getitem" not in str(n.target))
            elif "getitem" not in target and "sym_size" not in target and not target.startswith("<built-in"):
                report["portable_ops"][target.split(">")[0].replace("<EdgeOpOverload: ", "")] += 1
        report["delegate_calls"][name] = calls
    # Inputs outside the memory plan: the runtime then hands a program its own buffers (the KV cache above all)
    # instead of ExecuTorch copying each input into planned memory on every call (Method::set_input).
    et = edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    plans = et.executorch_program.execution_plan
    report["planned_bytes"] = {p.name: int(sum(p.non_const_buffer_sizes)) for p in plans}
    report["portable_ops"] = dict(report["portable_ops"])
    return et.buffer, report
