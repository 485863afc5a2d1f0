package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;

import org.junit.Test;

/** RoPE rows, the attention mask and the KV cache write, against values edge_runtime/kv.py computes. */
public class KvInputsTest {
    private static final float NEG = Float.NEGATIVE_INFINITY;

    @Test
    public void ropeRowsAreKvPysBitForBit() {
        Rope rope = new Rope(4, 8, 10000.0);
        // rope_rows(4, 8, 10000.0)[.][5, 0] as float32 bit patterns
        int[] cos = {0x3e913c2c, 0x3f7fae19, 0x3e913c2c, 0x3f7fae19};
        int[] sin = {0xbf757c10, 0x3d4cb6f5, 0xbf757c10, 0x3d4cb6f5};
        float[] c = rope.cos(5, 1).toArray();
        float[] s = rope.sin(5, 1).toArray();
        for (int i = 0; i < 4; i++) {
            assertEquals("cos " + i, cos[i], Float.floatToIntBits(c[i]));
            assertEquals("sin " + i, sin[i], Float.floatToIntBits(s[i]));
        }
        assertArrayEquals(new long[] {3, 1, 4}, rope.cos(2, 3).shape);
    }

    @Test
    public void maskMatchesKvPy() {
        // attention_mask(pos0=2, n_new=3, cache_len=5, rep=2)
        float[] row0 = {0, 0, NEG, NEG, NEG, 0, NEG, NEG};
        float[] row1 = {0, 0, NEG, NEG, NEG, 0, 0, NEG};
        float[] row2 = {0, 0, NEG, NEG, NEG, 0, 0, 0};
        FloatTensor m = AttentionMask.build(2, 3, 5, 2);
        assertArrayEquals(new long[] {6, 8}, m.shape);
        float[] v = m.toArray();
        float[][] want = {row0, row1, row2, row0, row1, row2};
        for (int r = 0; r < 6; r++) {
            for (int c = 0; c < 8; c++) {
                assertEquals("row " + r + " col " + c, want[r][c], v[r * 8 + c], 0f);
            }
        }
    }

    @Test
    public void kvWriteStoresRowsAtTheirPositions() {
        KvCache kv = new KvCache(1, 2, 4, 2);
        float[] k = {1, 2, 3, 4, 5, 6, 7, 8};  // (heads 2, tokens 2, dim 2)
        kv.write(0, 1, FloatTensor.of(k, 2, 2, 2), FloatTensor.of(k.clone(), 2, 2, 2));
        float[] want = {0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0};
        assertArrayEquals(want, kv.keys(0).toArray(), 0f);
        assertArrayEquals(want, kv.values(0).toArray(), 0f);
        assertEquals(true, kv.keys(0).data.isDirect());
    }
}
