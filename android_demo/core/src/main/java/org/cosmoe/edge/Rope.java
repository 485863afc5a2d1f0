package org.cosmoe.edge;

/**
 * The rotate-half RoPE table of cosmoe_edge/runtime/kv.py rope_rows: angles in float64, cos and sin
 * rounded to float32, the half-width rows repeated to head_dim.
 */
public final class Rope {
    private final int headDim;
    private final float[] cos;
    private final float[] sin;

    public Rope(int headDim, int maxSeqLen, double theta) {
        this.headDim = headDim;
        int half = headDim / 2;
        double[] invFreq = new double[half];
        for (int i = 0; i < half; i++) {
            invFreq[i] = 1.0 / Math.pow(theta, (2.0 * i) / headDim);
        }
        cos = new float[maxSeqLen * headDim];
        sin = new float[maxSeqLen * headDim];
        for (int p = 0; p < maxSeqLen; p++) {
            for (int i = 0; i < half; i++) {
                double angle = (double) p * invFreq[i];
                float c = (float) Math.cos(angle);
                float s = (float) Math.sin(angle);
                cos[p * headDim + i] = c;
                cos[p * headDim + half + i] = c;
                sin[p * headDim + i] = s;
                sin[p * headDim + half + i] = s;
            }
        }
    }

    /** cos rows for positions pos0..pos0+n-1, shape (n, 1, head_dim). */
    public FloatTensor cos(int pos0, int n) {
        return rows(cos, pos0, n);
    }

    /** sin rows for positions pos0..pos0+n-1, shape (n, 1, head_dim). */
    public FloatTensor sin(int pos0, int n) {
        return rows(sin, pos0, n);
    }

    private FloatTensor rows(float[] table, int pos0, int n) {
        FloatTensor t = FloatTensor.direct(n, 1, headDim);
        t.put(0, table, pos0 * headDim, n * headDim);
        return t;
    }
}
