package org.cosmoe.edge;

/**
 * Per layer, keys and values (max_seq_len, n_kv_heads, head_dim) that the runtime owns
 * (cosmoe_edge/runtime/kv.py KVCache). Position-major, so the filled prefix a layer program reads is one
 * contiguous block at the start of the buffer: {@link #pastKeys}/{@link #pastValues} hand it over
 * as a view, without a copy. Stale rows need no clearing: a layer program only sees rows before
 * pos0 (and, when pos0 = 0, row 0 as a dummy the mask hides).
 */
public final class KvCache {
    private final FloatTensor[] k;
    private final FloatTensor[] v;
    private final int kvHeads;
    private final int maxSeqLen;
    private final int headDim;

    public KvCache(int nLayers, int kvHeads, int maxSeqLen, int headDim) {
        this.kvHeads = kvHeads;
        this.maxSeqLen = maxSeqLen;
        this.headDim = headDim;
        k = new FloatTensor[nLayers];
        v = new FloatTensor[nLayers];
        for (int l = 0; l < nLayers; l++) {
            k[l] = FloatTensor.direct(maxSeqLen, kvHeads, headDim);
            v[l] = FloatTensor.direct(maxSeqLen, kvHeads, headDim);
        }
    }

    /** The number of past rows a layer program takes for a step at pos0: P = max(pos0, 1). */
    public static int pastRows(int pos0) {
        return Math.max(pos0, 1);
    }

    /** The whole key cache of a layer, (max_seq_len, n_kv_heads, head_dim). */
    public FloatTensor keys(int layer) {
        return k[layer];
    }

    /** The whole value cache of a layer, (max_seq_len, n_kv_heads, head_dim). */
    public FloatTensor values(int layer) {
        return v[layer];
    }

    /** k_past: the first max(pos0, 1) rows of the layer's keys, (P, n_kv_heads, head_dim), a view. */
    public FloatTensor pastKeys(int layer, int pos0) {
        return k[layer].firstRows(pastRows(pos0));
    }

    /** v_past: the first max(pos0, 1) rows of the layer's values, (P, n_kv_heads, head_dim), a view. */
    public FloatTensor pastValues(int layer, int pos0) {
        return v[layer].firstRows(pastRows(pos0));
    }

    /** Stores a layer's new k, v (n, n_kv_heads, head_dim) at rows pos0..pos0+n-1. */
    public void write(int layer, int pos0, FloatTensor newK, FloatTensor newV) {
        store(k[layer], pos0, newK);
        store(v[layer], pos0, newV);
    }

    private void store(FloatTensor cache, int pos0, FloatTensor rows) {
        if (rows.shape.length != 3 || rows.dim(1) != kvHeads || rows.dim(2) != headDim || pos0 < 0
                || pos0 + rows.dim(0) > maxSeqLen) {
            throw new IllegalStateException("layer program returned k/v of shape "
                    + java.util.Arrays.toString(rows.shape) + " for position " + pos0 + "; expected (T, "
                    + kvHeads + ", " + headDim + ") within " + maxSeqLen + " positions");
        }
        cache.put(pos0 * kvHeads * headDim, rows.toArray(), 0, rows.numel());
    }
}
