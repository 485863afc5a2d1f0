package org.cosmoe.edge.onnx;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;

import org.cosmoe.edge.ArtifactException;
import org.cosmoe.edge.FloatTensor;
import org.cosmoe.edge.ProgramRunner;

import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** One onnxruntime session: inputs bound to the graph's inputs in order, float32 outputs copied out. */
final class OnnxProgram implements ProgramRunner {
    private final OrtEnvironment env;
    private final String name;
    private final List<String> inputs;
    private OrtSession session;

    OnnxProgram(OrtEnvironment env, OrtSession session, String name) throws OrtException {
        this.env = env;
        this.session = session;
        this.name = name;
        this.inputs = new ArrayList<>(session.getInputInfo().keySet());  // in the graph's order
    }

    @Override
    public FloatTensor[] run(String method, FloatTensor... args) {
        if (args.length != inputs.size()) {
            throw new ArtifactException(name + " failed to run: corrupt program or wrong inputs (it takes "
                    + inputs.size() + " inputs, not " + args.length + ")", "program_failed");
        }
        Map<String, OnnxTensor> feeds = new LinkedHashMap<>();
        try {
            for (int i = 0; i < args.length; i++) {
                FloatBuffer data = args[i].data.duplicate();
                data.rewind();
                feeds.put(inputs.get(i), OnnxTensor.createTensor(env, data, args[i].shape));
            }
            try (OrtSession.Result result = session.run(feeds)) {
                FloatTensor[] out = new FloatTensor[result.size()];
                for (int i = 0; i < out.length; i++) {
                    OnnxValue v = result.get(i);
                    OnnxTensor t = (OnnxTensor) v;
                    FloatBuffer fb = t.getFloatBuffer();  // a copy, outliving the result
                    float[] values = new float[fb.remaining()];
                    fb.get(values);
                    out[i] = FloatTensor.of(values, t.getInfo().getShape());
                }
                return out;
            }
        } catch (OrtException e) {
            String detail = String.valueOf(e.getMessage()).split("\n", 2)[0];
            throw new ArtifactException(name + " failed to run: corrupt program or wrong inputs ("  // backends.py's
                    + detail.substring(0, Math.min(160, detail.length())) + ")", "program_failed");
        } finally {
            for (OnnxTensor t : feeds.values()) {
                t.close();
            }
        }
    }

    @Override
    public void close() {
        if (session != null) {
            try {
                session.close();
            } catch (OrtException e) {
                // closing a session we own cannot be acted on; the memory is the allocator's either way
            }
            session = null;
        }
    }
}
