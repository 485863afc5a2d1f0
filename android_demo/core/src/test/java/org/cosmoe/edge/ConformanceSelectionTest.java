package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Test;

/**
 * selection_cases.json: Selection.select on recorded router logits gives Python's experts (in rank order, -1
 * for those that do not run), weights, compressed-expert factor theta and counts, for every kind of choice.
 */
public class ConformanceSelectionTest {
    private final JsonObject file = Conformance.json("selection_cases.json");
    private final int numExperts = file.get("num_experts").getAsInt();

    @Test
    public void selectionCasesMatchPython() {
        int n = 0;
        boolean sawTheta = false;
        boolean sawSkip = false;
        boolean sawSticky = false;
        for (JsonElement e : file.getAsJsonArray("cases")) {
            JsonObject c = e.getAsJsonObject();
            JsonObject s = c.getAsJsonObject("selection");
            Selection sel = new Selection(s.get("experts_per_token").getAsInt(), s.get("on_miss").getAsString(),
                    s.get("skip_below").getAsDouble(), s.get("cache_bias").getAsDouble());
            float[][] vectors = c.get("vectors").isJsonNull() ? null : rows(c.get("vectors"));
            boolean[] resident = new boolean[numExperts];
            for (int i = 0; i < numExperts; i++) {
                resident[i] = c.getAsJsonArray("resident").get(i).getAsBoolean();
            }
            Selection.Counts counts = new Selection.Counts();
            Selection.Sticky sticky = null;
            if (!c.get("sticky").isJsonNull()) {
                JsonObject st = c.getAsJsonObject("sticky");
                sticky = new Selection.Sticky(st.get("delta").getAsDouble(), numExperts);
                System.arraycopy(Conformance.floats(st.get("prev_in")), 0, sticky.prev, 0, numExperts);
                sawSticky = true;
            }
            Selection.Result r = sel.select(Conformance.matrix(c.get("logits")), numExperts,
                    c.get("top_k").getAsInt(), c.get("renorm").getAsBoolean(), vectors,
                    sel.needsResidency() ? resident : null, counts, sticky);
            if (sticky != null) {
                assertArrayEquals("sticky state, case " + n,
                        Conformance.floats(c.getAsJsonObject("sticky").get("prev_out")), sticky.prev, 0f);
            }
            int[][] experts = Conformance.intRows(c.get("experts"));
            float[][] weights = rows(c.get("weights"));
            assertEquals("case " + n, experts.length, r.routing.experts.length);
            for (int t = 0; t < experts.length; t++) {
                assertArrayEquals("experts, case " + n, experts[t], r.routing.experts[t]);
                assertArrayEquals("weights, case " + n, weights[t], r.routing.weights[t], 1e-6f);
            }
            if (c.get("theta").isJsonNull()) {
                assertNull("theta, case " + n, r.theta);
            } else {
                float[][] theta = rows(c.get("theta"));
                for (int t = 0; t < theta.length; t++) {
                    assertArrayEquals("theta, case " + n, theta[t], r.theta[t], 1e-6f);
                }
                sawTheta = true;
            }
            JsonObject want = c.getAsJsonObject("counts");
            assertEquals("experts_run, case " + n, want.get("experts_run").getAsInt(), counts.expertsRun);
            assertEquals("compressed, case " + n, want.get("compressed").getAsInt(), counts.compressed);
            assertEquals("misses_compressed, case " + n, want.get("misses_compressed").getAsInt(),
                    counts.missesCompressed);
            assertEquals("misses_skipped, case " + n, want.get("misses_skipped").getAsInt(), counts.missesSkipped);
            assertEquals("bias_changed, case " + n, want.get("bias_changed").getAsInt(), counts.biasChanged);
            sawSkip |= counts.missesSkipped > 0;
            n++;
        }
        assertTrue("too few selection cases", n > 10 && sawTheta && sawSkip && sawSticky);
    }

    private static float[][] rows(JsonElement e) {
        float[][] out = new float[e.getAsJsonArray().size()][];
        for (int i = 0; i < out.length; i++) {
            out[i] = Conformance.floats(e.getAsJsonArray().get(i));
        }
        return out;
    }
}
