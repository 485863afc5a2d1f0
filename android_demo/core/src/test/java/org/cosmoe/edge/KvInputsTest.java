package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Test;

import java.nio.ByteOrder;

/**
 * RoPE rows, the attention mask, and the KV cache's past rows and write, against the values
 * cosmoe_edge/runtime/kv.py computes (kv_cases.json: rope_rows, attention_mask, KVCache.past/write).
 */
public class KvInputsTest {
    private static final int ZERO = Float.floatToIntBits(0f);
    private static final int NEG = Float.floatToIntBits(Float.NEGATIVE_INFINITY);
    private final JsonObject cases = Conformance.json("kv_cases.json");

    @Test
    public void ropeRowsAreKvPysBitForBit() {
        int n = 0;
        for (JsonElement e : cases.getAsJsonArray("rope")) {
            JsonObject c = e.getAsJsonObject();
            int headDim = c.get("head_dim").getAsInt();
            int pos = c.get("pos").getAsInt();
            Rope rope = new Rope(headDim, c.get("max_seq_len").getAsInt(), c.get("theta").getAsDouble());
            float[] cos = rope.cos(pos, 1).toArray();
            float[] sin = rope.sin(pos, 1).toArray();
            int[] wantCos = Conformance.ints(c.get("cos_bits"));
            int[] wantSin = Conformance.ints(c.get("sin_bits"));
            for (int i = 0; i < headDim; i++) {
                assertEquals("cos " + headDim + "/" + pos + " " + i, wantCos[i], Float.floatToIntBits(cos[i]));
                assertEquals("sin " + headDim + "/" + pos + " " + i, wantSin[i], Float.floatToIntBits(sin[i]));
            }
            n++;
        }
        assertTrue("no rope cases", n > 0);
        assertArrayEquals(new long[] {3, 1, 4}, new Rope(4, 8, 10000.0).cos(2, 3).shape);
    }

    @Test
    public void maskMatchesKvPy() {
        int n = 0;
        for (JsonElement e : cases.getAsJsonArray("masks")) {
            JsonObject c = e.getAsJsonObject();
            int pos0 = c.get("pos0").getAsInt();
            int tokens = c.get("n").getAsInt();
            int rep = c.get("rep").getAsInt();
            String label = "attention_mask(" + pos0 + ", " + tokens + ", " + rep + ")";
            JsonArray rows = c.getAsJsonArray("rows");
            FloatTensor m = AttentionMask.build(pos0, tokens, rep);
            int width = rows.get(0).getAsString().length();
            assertArrayEquals(label + " shape", new long[] {rows.size(), width}, m.shape);
            assertTrue(label + " direct, native order", m.data.isDirect() && m.data.order() == ByteOrder.nativeOrder());
            float[] v = m.toArray();
            for (int r = 0; r < rows.size(); r++) {
                for (int col = 0; col < width; col++) {
                    int want = rows.get(r).getAsString().charAt(col) == '0' ? ZERO : NEG;
                    assertEquals(label + " row " + r + " col " + col, want, Float.floatToIntBits(v[r * width + col]));
                }
            }
            n++;
        }
        assertTrue("no mask cases", n > 0);
    }

    @Test
    public void kvWritesAndPastRowsMatchKvPy() {
        JsonObject spec = cases.getAsJsonObject("kv");
        KvCache kv = new KvCache(spec.get("n_layers").getAsInt(), spec.get("n_kv_heads").getAsInt(),
                spec.get("max_seq_len").getAsInt(), spec.get("head_dim").getAsInt());
        for (JsonElement e : spec.getAsJsonArray("steps")) {
            JsonObject s = e.getAsJsonObject();
            int[] shape = Conformance.ints(s.get("shape"));
            kv.write(0, s.get("pos0").getAsInt(), FloatTensor.of(Conformance.floats(s.get("k")), shape[0], shape[1], shape[2]),
                    FloatTensor.of(Conformance.floats(s.get("v")), shape[0], shape[1], shape[2]));
            assertArrayEquals(Conformance.floats(s.get("cache_k")), kv.keys(0).toArray(), 0f);
            assertArrayEquals(Conformance.floats(s.get("cache_v")), kv.values(0).toArray(), 0f);
            for (JsonElement pe : s.getAsJsonArray("past")) {
                JsonObject p = pe.getAsJsonObject();
                int pos0 = p.get("pos0").getAsInt();
                assertArrayEquals("past keys at " + pos0, Conformance.floats(p.get("k")), kv.pastKeys(0, pos0).toArray(), 0f);
                assertArrayEquals("past values at " + pos0, Conformance.floats(p.get("v")),
                        kv.pastValues(0, pos0).toArray(), 0f);
            }
        }
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
