package org.cosmoe.edge;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A {@link ProgramLoader} whose programs follow a script instead of running a model: layer
 * programs return the script's router logits (h and x passed through, k and v (T, n_kv_heads,
 * head_dim) rows distinct per layer, position and token), the head returns the script's logits,
 * experts return zeros. Every call is checked against the calling convention (cosmoe_edge/export/artifact.py
 * CALLING_CONVENTION): shapes, the mask's values, and k_past, v_past (P = max(pos0, 1) rows) being
 * exactly the k, v this layer returned for positions before pos0. The calls are logged.
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
    /** Past rows (over all layer calls) whose k and v were checked against what the program returned. */
    int pastRowsChecked;
    private final Script script;
    private final TestArtifact a;
    private int headCalls;
    /** Per layer, every row an expert program was given as input. */
    final List<List<float[]>> expertInputs = new ArrayList<>();
    /** What every element of expert (layer, e)'s output is, indexed [layer][e]; null: zeros. */
    float[][] expertValues;

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

    /** The runtime's own inputs (past rows, mask, RoPE rows) go to the program without a copy. */
    private static void direct(FloatTensor t, String name) {
        check(t.data.isDirect() && t.data.order() == java.nio.ByteOrder.nativeOrder(),
                name + " is not a direct native-order buffer");
    }

    private final class Backbone implements ProgramRunner {
        /** Per layer, the k and v rows (n_kv_heads * head_dim floats) this program returned per position. */
        private final float[][][] storedK = new float[a.nLayers][a.maxSeqLen][];
        private final float[][][] storedV = new float[a.nLayers][a.maxSeqLen][];

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
            int row = a.nKvHeads * a.headDim;
            check(t >= 1 && t <= a.layerMaxTokens, t + " tokens for a layer program");
            shape(in[0], "h", t, a.dim);
            shape(in[1], "cos", t, 1, a.headDim);
            shape(in[2], "sin", t, 1, a.headDim);
            check(in[3].shape.length == 3, "k_past of rank " + in[3].shape.length);
            int past = (int) in[3].dim(0);
            // the exported programs take 1 <= P <= max_seq_len - 1 past rows
            check(past >= 1 && past <= a.maxSeqLen - 1, past + " past rows");
            shape(in[3], "k_past", past, a.nKvHeads, a.headDim);
            shape(in[4], "v_past", past, a.nKvHeads, a.headDim);
            shape(in[5], "mask", (long) rep * t, past + t);
            for (int i = 1; i < 6; i++) {
                direct(in[i], method + " input " + i);
            }
            float[] mask = in[5].toArray();
            // P = max(pos0, 1): one past row is pos0 = 1, or the dummy row when its column is masked
            int pos0 = past > 1 || mask[0] == 0f ? past : 0;
            check(pos0 + t <= a.maxSeqLen, "positions " + pos0 + ".." + (pos0 + t - 1));
            for (int r = 0; r < rep * t; r++) {
                int tok = r % t;
                for (int c = 0; c < past + t; c++) {
                    boolean visible = c < pos0 || (c >= past && c - past <= tok);
                    float want = visible ? 0f : Float.NEGATIVE_INFINITY;
                    float got = mask[r * (past + t) + c];
                    check(Float.floatToIntBits(got) == Float.floatToIntBits(want), "mask at pos0 " + pos0 + " row "
                            + r + " col " + c + " is " + got + ", expected " + want);
                }
            }
            // the past rows are the rows this layer's earlier calls returned, at their positions
            float[] kPast = in[3].toArray();
            float[] vPast = in[4].toArray();
            for (int p = 0; p < pos0; p++) {
                check(storedK[layer][p] != null, method + " at " + pos0 + " reads position " + p + ", never written");
                for (int j = 0; j < row; j++) {
                    check(kPast[p * row + j] == storedK[layer][p][j] && vPast[p * row + j] == storedV[layer][p][j],
                            method + " at " + pos0 + ": k_past/v_past row " + p + " is not the k/v stored there");
                }
                pastRowsChecked++;
            }
            calls.add(method + " " + pos0 + " " + t);
            float[] h = in[0].toArray().clone();
            float[] logits = script.routerLogits(layer, pos0, t, h);
            check(logits.length == t * a.numExperts, "script logits for " + t + " tokens");
            // k, v (T, n_kv_heads, head_dim): distinct per layer, position, head and token
            float[] k = new float[t * row];
            float[] v = new float[t * row];
            for (int i = 0; i < t; i++) {
                for (int j = 0; j < row; j++) {
                    k[i * row + j] = layer * 100000 + (pos0 + i) * 100 + j + h[i * a.dim + j % a.dim];
                    v[i * row + j] = -k[i * row + j] - 0.5f;
                }
                storedK[layer][pos0 + i] = java.util.Arrays.copyOfRange(k, i * row, (i + 1) * row);
                storedV[layer][pos0 + i] = java.util.Arrays.copyOfRange(v, i * row, (i + 1) * row);
            }
            return new FloatTensor[] {FloatTensor.of(h, t, a.dim), FloatTensor.of(h.clone(), t, a.dim),
                FloatTensor.of(logits, t, a.numExperts), FloatTensor.of(k, t, a.nKvHeads, a.headDim),
                FloatTensor.of(v, t, a.nKvHeads, a.headDim)};
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
            while (expertInputs.size() <= layer) {
                expertInputs.add(new ArrayList<float[]>());
            }
            float[] x = in[0].toArray();
            for (int r = 0; r < rows; r++) {
                expertInputs.get(layer).add(java.util.Arrays.copyOfRange(x, r * a.dim, (r + 1) * a.dim));
            }
            float[] y = new float[rows * a.dim];
            if (expertValues != null) {
                java.util.Arrays.fill(y, expertValues[layer][expert]);
            }
            return new FloatTensor[] {FloatTensor.of(y, rows, a.dim)};
        }

        @Override
        public void close() {
            closed++;
        }
    }
}
