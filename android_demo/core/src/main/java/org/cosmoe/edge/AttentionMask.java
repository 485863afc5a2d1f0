package org.cosmoe.edge;

import java.util.Arrays;

/**
 * The additive mask a layer program takes (edge_runtime/kv.py attention_mask): (rep*n, S+n);
 * cache slots before pos0 are visible to every new token, the new tokens see each other causally,
 * everything else is -inf. Rows: repeat-major, then token.
 */
public final class AttentionMask {
    private AttentionMask() {
    }

    public static FloatTensor build(int pos0, int n, int cacheLen, int rep) {
        int width = cacheLen + n;
        float[] row = new float[width];
        FloatTensor mask = FloatTensor.direct((long) rep * n, width);
        for (int t = 0; t < n; t++) {
            Arrays.fill(row, Float.NEGATIVE_INFINITY);
            Arrays.fill(row, 0, pos0, 0f);
            Arrays.fill(row, cacheLen, cacheLen + t + 1, 0f);
            for (int r = 0; r < rep; r++) {
                mask.put((r * n + t) * width, row, 0, width);
            }
        }
        return mask;
    }
}
