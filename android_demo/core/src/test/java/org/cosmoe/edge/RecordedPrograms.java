package org.cosmoe.edge;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A {@link ProgramLoader} whose programs follow a script instead of running a model: layer
 * programs return the script's router logits (h and x passed through, k and v zeros), the head
 * returns the script's logits, experts return zeros. Every call's shapes are checked against the
 * calling convention, and the calls are logged.
 */
final class RecordedPrograms implements ProgramLoader {
    interface Script {
        /** Router logits (T, E) row-major for this layer call; {@code h} is the call's input (T, D). */
        float[] routerLogits(int layer, int pos0, int tokens, float[] h);

        /** Logits (vocab) for the n-th head call. */
        float[] headLogits(int call);
    }

    /** Calls in order: "layer_L pos0 T", "expert L E rows", "head". */
    final List<String> calls = new ArrayList<>();
    final List<String> opened = new ArrayList<>();
    int closed;
    private final Script script;
    private final TestArtifact a;
    private int headCalls;

    RecordedPrograms(Script script, TestArtifact artifact) {
        this.script = script;
        this.a = artifact;
    }

    @Override
    public ProgramRunner open(File path, List<String> methods) {
        opened.add(path.getName() + methods);
        Matcher m = Pattern.compile("l(\\d+)_e(\\d+)\\.pte").matcher(path.getName());
        if (m.matches()) {
            return new Expert(Integer.parseInt(m.group(1)), Integer.parseInt(m.group(2)));
        }
        return new Backbone();
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError("calling convention broken: " + what);
        }
    }

    private static void shape(FloatTensor t, String name, long... expected) {
        check(java.util.Arrays.equals(t.shape, expected), name + " has shape " + java.util.Arrays.toString(t.shape)
                + ", expected " + java.util.Arrays.toString(expected));
    }

    private final class Backbone implements ProgramRunner {
        @Override
        public FloatTensor[] run(String method, FloatTensor... in) {
            if (method.equals("head")) {
                shape(in[0], "head h", 1, a.dim);
                calls.add("head");
                float[] logits = script.headLogits(headCalls++);
                return new FloatTensor[] {FloatTensor.of(logits, 1, logits.length)};
            }
            check(method.startsWith("layer_") && in.length == 6, method + " with " + in.length + " inputs");
            int layer = Integer.parseInt(method.substring("layer_".length()));
            int t = (int) in[0].dim(0);
            int rep = a.nHeads / a.nKvHeads;
            shape(in[0], "h", t, a.dim);
            shape(in[1], "cos", t, 1, a.headDim);
            shape(in[2], "sin", t, 1, a.headDim);
            shape(in[3], "k_cache", a.nKvHeads, a.maxSeqLen, a.headDim);
            shape(in[4], "v_cache", a.nKvHeads, a.maxSeqLen, a.headDim);
            shape(in[5], "mask", (long) rep * t, a.maxSeqLen + t);
            float[] mask = in[5].toArray();
            int pos0 = 0;
            while (pos0 < a.maxSeqLen && mask[pos0] == 0f) {
                pos0++;
            }
            calls.add(method + " " + pos0 + " " + t);
            float[] h = in[0].toArray().clone();
            float[] logits = script.routerLogits(layer, pos0, t, h);
            check(logits.length == t * a.numExperts, "script logits for " + t + " tokens");
            return new FloatTensor[] {FloatTensor.of(h, t, a.dim), FloatTensor.of(h.clone(), t, a.dim),
                FloatTensor.of(logits, t, a.numExperts), FloatTensor.of(new float[a.nKvHeads * t * a.headDim],
                    a.nKvHeads, t, a.headDim), FloatTensor.of(new float[a.nKvHeads * t * a.headDim], a.nKvHeads, t,
                    a.headDim)};
        }

        @Override
        public void close() {
            closed++;
        }
    }

    private final class Expert implements ProgramRunner {
        final int layer;
        final int expert;

        Expert(int layer, int expert) {
            this.layer = layer;
            this.expert = expert;
        }

        @Override
        public FloatTensor[] run(String method, FloatTensor... in) {
            check(method.equals("forward") && in.length == 1, "expert call " + method);
            int rows = (int) in[0].dim(0);
            shape(in[0], "expert x", rows, a.dim);
            check(rows >= 1 && rows <= a.expertMaxTokens, rows + " rows for an expert program");
            calls.add("expert " + layer + " " + expert + " " + rows);
            return new FloatTensor[] {FloatTensor.of(new float[rows * a.dim], rows, a.dim)};
        }

        @Override
        public void close() {
            closed++;
        }
    }
}
