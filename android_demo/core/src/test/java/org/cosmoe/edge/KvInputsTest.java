package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import org.junit.Test;

import java.nio.ByteOrder;

/**
 * RoPE rows, the attention mask, and the KV cache's past rows and write, against values
 * cosmoe_edge/runtime/kv.py computes (rope_rows, attention_mask, KVCache.past/write).
 */
public class KvInputsTest {
    private static final int ZERO = Float.floatToIntBits(0f);
    private static final int NEG = Float.floatToIntBits(Float.NEGATIVE_INFINITY);

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

    /** attention_mask(pos0, n_new, rep) as rows of '0' (+0.0) and '-' (-inf), printed by kv.py. */
    private static void assertMask(int pos0, int n, int rep, String... rows) {
        String label = "attention_mask(" + pos0 + ", " + n + ", " + rep + ")";
        FloatTensor m = AttentionMask.build(pos0, n, rep);
        int width = rows[0].length();
        assertArrayEquals(label + " shape", new long[] {rows.length, width}, m.shape);
        assertTrue(label + " direct, native order", m.data.isDirect() && m.data.order() == ByteOrder.nativeOrder());
        float[] v = m.toArray();
        for (int r = 0; r < rows.length; r++) {
            for (int c = 0; c < width; c++) {
                int want = rows[r].charAt(c) == '0' ? ZERO : NEG;
                assertEquals(label + " row " + r + " col " + c, want, Float.floatToIntBits(v[r * width + c]));
            }
        }
    }

    @Test
    public void maskMatchesKvPy() {
        // pos0 = 0: one dummy past column, masked; the new tokens causal among themselves
        assertMask(0, 1, 1, "-0");
        assertMask(0, 3, 2, "-0--", "-00-", "-000", "-0--", "-00-", "-000");
        // pos0 = 1: the single past column is real and visible
        assertMask(1, 1, 2, "00", "00");
        assertMask(2, 3, 2, "000--", "0000-", "00000", "000--", "0000-", "00000");
        assertMask(5, 1, 3, "000000", "000000", "000000");
        assertMask(4, 2, 1, "00000-", "000000");
    }

    @Test
    public void maskFollowsTheDefinitionEverywhere() {
        for (int pos0 = 0; pos0 <= 6; pos0++) {
            for (int n = 1; n <= 5; n++) {
                for (int rep = 1; rep <= 3; rep++) {
                    int past = Math.max(pos0, 1);
                    FloatTensor m = AttentionMask.build(pos0, n, rep);
                    assertArrayEquals(new long[] {rep * n, past + n}, m.shape);
                    float[] v = m.toArray();
                    for (int r = 0; r < rep; r++) {
                        for (int t = 0; t < n; t++) {
                            for (int c = 0; c < past + n; c++) {
                                boolean visible = c < pos0 || (c >= past && c - past <= t);
                                assertEquals(pos0 + "," + n + "," + rep + " row " + (r * n + t) + " col " + c,
                                        visible ? ZERO : NEG, Float.floatToIntBits(v[(r * n + t) * (past + n) + c]));
                            }
                        }
                    }
                }
            }
        }
    }

    @Test
    public void kvWriteStoresRowsAtTheirPositionsPositionMajor() {
        // KVCache(1, n_kv_heads=2, max_seq_len=4, head_dim=2).write(0, 1, k, -k), k = arange(1, 9) as (T=2, 2, 2)
        KvCache kv = new KvCache(1, 2, 4, 2);
        float[] k = {1, 2, 3, 4, 5, 6, 7, 8};
        float[] v = {-1, -2, -3, -4, -5, -6, -7, -8};
        kv.write(0, 1, FloatTensor.of(k, 2, 2, 2), FloatTensor.of(v, 2, 2, 2));
        assertArrayEquals(new long[] {4, 2, 2}, kv.keys(0).shape);
        assertArrayEquals(new float[] {0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0}, kv.keys(0).toArray(), 0f);
        assertArrayEquals(new float[] {0, 0, 0, 0, -1, -2, -3, -4, -5, -6, -7, -8, 0, 0, 0, 0},
                kv.values(0).toArray(), 0f);
        assertTrue(kv.keys(0).data.isDirect());

        // KVCache.past(0, pos0): the first max(pos0, 1) rows
        for (int pos0 : new int[] {0, 1}) {
            FloatTensor pk = kv.pastKeys(0, pos0);
            assertArrayEquals("past rows at pos0 " + pos0, new long[] {1, 2, 2}, pk.shape);
            assertArrayEquals(new float[] {0, 0, 0, 0}, pk.toArray(), 0f);
            assertArrayEquals(new float[] {0, 0, 0, 0}, kv.pastValues(0, pos0).toArray(), 0f);
        }
        FloatTensor pk = kv.pastKeys(0, 3);
        FloatTensor pv = kv.pastValues(0, 3);
        assertArrayEquals(new long[] {3, 2, 2}, pk.shape);
        assertArrayEquals(new long[] {3, 2, 2}, pv.shape);
        assertArrayEquals(new float[] {0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, pk.toArray(), 0f);
        assertArrayEquals(new float[] {0, 0, 0, 0, -1, -2, -3, -4, -5, -6, -7, -8}, pv.toArray(), 0f);

        // the past rows are a view of the cache: exactly numel floats, direct and native-order, so the
        // ExecuTorch runner passes them without a copy, and later writes show through
        assertEquals(12, pk.numel());
        assertTrue(pk.data.isDirect() && pk.data.order() == ByteOrder.nativeOrder());
        kv.write(0, 0, FloatTensor.of(new float[] {10, 20, 30, 40}, 1, 2, 2),
                FloatTensor.of(new float[] {-10, -20, -30, -40}, 1, 2, 2));
        assertArrayEquals(new float[] {10, 20, 30, 40, 1, 2, 3, 4, 5, 6, 7, 8}, pk.toArray(), 0f);
        assertArrayEquals(new float[] {10, 20, 30, 40, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0},
                kv.keys(0).toArray(), 0f);
        assertArrayEquals(new float[] {10, 20, 30, 40}, kv.pastKeys(0, 0).toArray(), 0f);
    }

    @Test
    public void kvOfTheOldHeadMajorShapeIsRefused() {
        KvCache kv = new KvCache(1, 2, 4, 3);
        float[] rows = new float[2 * 1 * 3];
        try {
            // (n_kv_heads, T, head_dim), the old convention's output
            kv.write(0, 0, FloatTensor.of(rows, 2, 1, 3), FloatTensor.of(rows.clone(), 2, 1, 3));
            fail("accepted k of shape (2, 1, 3) for n_kv_heads 2");
        } catch (IllegalStateException expected) {
            // refused
        }
        try {
            kv.write(0, 3, FloatTensor.of(new float[12], 2, 2, 3), FloatTensor.of(new float[12], 2, 2, 3));
            fail("wrote past max_seq_len");
        } catch (IllegalStateException expected) {
            // refused
        }
    }
}
