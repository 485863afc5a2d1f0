package org.cosmoe.edge;

/**
 * Per layer, keys and values (n_kv_heads, max_seq_len, head_dim) that the runtime owns and the
 * layer programs read. Stale slots need no clearing: the mask hides slots at and after pos0.
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
            k[l] = FloatTensor.direct(kvHeads, maxSeqLen, headDim);
            v[l] = FloatTensor.direct(kvHeads, maxSeqLen, headDim);
        }
    }

    public FloatTensor keys(int layer) {
        return k[layer];
    }

    public FloatTensor values(int layer) {
        return v[layer];
    }

    /** Stores a layer's new k, v (n_kv_heads, n, head_dim) at positions pos0..pos0+n-1. */
    public void write(int layer, int pos0, FloatTensor newK, FloatTensor newV) {
        store(k[layer], pos0, newK);
        store(v[layer], pos0, newV);
    }

    private void store(FloatTensor cache, int pos0, FloatTensor rows) {
        int n = (int) rows.dim(1);
        if (rows.dim(0) != kvHeads || rows.dim(2) != headDim || pos0 + n > maxSeqLen) {
            throw new IllegalStateException("layer program returned k/v of an unexpected shape");
        }
        float[] src = rows.toArray();
        for (int h = 0; h < kvHeads; h++) {
            cache.put((h * maxSeqLen + pos0) * headDim, src, h * n * headDim, n * headDim);
        }
    }
}
