package org.cosmoe.edge.demo;

import org.cosmoe.edge.FloatTensor;
import org.cosmoe.edge.ProgramRunner;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

import java.nio.ByteOrder;

/** One loaded ExecuTorch module: float32 tensors in, float32 tensors (copied out) back. */
final class ExecuTorchProgram implements ProgramRunner {
    private final Module module;

    ExecuTorchProgram(Module module) {
        this.module = module;
    }

    @Override
    public FloatTensor[] run(String method, FloatTensor... inputs) {
        EValue[] args = new EValue[inputs.length];
        for (int i = 0; i < inputs.length; i++) {
            FloatTensor in = inputs[i];
            // the runtime's own buffers (the KV cache's past rows, a view of the cache; mask; RoPE rows)
            // are direct: passed without a copy
            Tensor t = in.data.isDirect() && in.data.order() == ByteOrder.nativeOrder()
                    ? Tensor.fromBlob(in.data, in.shape)
                    : Tensor.fromBlob(in.toArray(), in.shape);
            args[i] = EValue.from(t);
        }
        EValue[] outs = module.execute(method, args);
        FloatTensor[] result = new FloatTensor[outs.length];
        for (int i = 0; i < outs.length; i++) {
            // outputs live in the method's planned memory, which its next call overwrites: copy them out
            Tensor t = outs[i].toTensor();
            result[i] = FloatTensor.of(t.getDataAsFloatArray(), t.shape());
        }
        return result;
    }

    /** Destroys the native module now (not at garbage collection), so eviction frees its memory. */
    @Override
    public void close() {
        module.destroy();
    }
}
