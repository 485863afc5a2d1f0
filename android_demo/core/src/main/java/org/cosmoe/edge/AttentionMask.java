package org.cosmoe.edge;

import java.util.Arrays;

/**
 * The additive mask a layer program takes (cosmoe_edge/runtime/kv.py attention_mask): (rep*n, P+n) with
 * P = max(pos0, 1) past columns. The past columns before pos0 are visible to every new token (the
 * dummy column when pos0 = 0 is not), the last n columns are causal among the new tokens (0 where
 * column <= token, -inf above). Rows: repeat-major, then token.
 */
public final class AttentionMask {
    private AttentionMask() {
    }

    public static FloatTensor build(int pos0, int n, int rep) {
        int past = KvCache.pastRows(pos0);
        int width = past + n;
        float[] row = new float[width];
        FloatTensor mask = FloatTensor.direct((long) rep * n, width);
        for (int t = 0; t < n; t++) {
            Arrays.fill(row, Float.NEGATIVE_INFINITY);
            Arrays.fill(row, 0, pos0, 0f);
            Arrays.fill(row, past, past + t + 1, 0f);
            for (int r = 0; r < rep; r++) {
                mask.put((r * n + t) * width, row, 0, width);
            }
        }
        return mask;
    }
}
