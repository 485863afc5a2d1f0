package org.cosmoe.edge;

import java.io.File;

/**
 * Token embedding rows from embedding.safetensors: fp32 'weight', or int8 'weight' rows times one
 * fp32 'scale' per row (dequantised one looked-up row at a time, as engine.py does).
 */
public final class Embedding {
    public final int vocab;
    public final int dim;
    private final float[] fp32;
    private final byte[] int8;
    private final float[] scale;

    public Embedding(int vocab, int dim, float[] fp32, byte[] int8, float[] scale) {
        this.vocab = vocab;
        this.dim = dim;
        this.fp32 = fp32;
        this.int8 = int8;
        this.scale = scale;
    }

    public static Embedding load(File file) {
        SafeTensors st = SafeTensors.read(file);
        long[] shape = st.shape("weight");
        if (shape.length != 2) {
            throw new ArtifactException(file.getName() + ": 'weight' should be (vocab, dim)");
        }
        int vocab = (int) shape[0];
        int dim = (int) shape[1];
        if (!st.has("scale")) {
            return new Embedding(vocab, dim, st.floats("weight"), null, null);
        }
        float[] scale = st.floats("scale");
        if (scale.length != vocab) {
            throw new ArtifactException(file.getName() + ": 'scale' should have one value per row");
        }
        return new Embedding(vocab, dim, null, st.int8("weight"), scale);
    }

    /** Rows for the ids, row-major (ids.length, dim). */
    public float[] rows(int[] ids) {
        float[] out = new float[ids.length * dim];
        for (int i = 0; i < ids.length; i++) {
            int id = ids[i];
            if (id < 0 || id >= vocab) {
                throw new IllegalArgumentException("token id " + id + " is outside the vocabulary of " + vocab);
            }
            for (int j = 0; j < dim; j++) {
                out[i * dim + j] = fp32 != null ? fp32[id * dim + j] : (float) int8[id * dim + j] * scale[id];
            }
        }
        return out;
    }
}
