package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Test;

/** generation.json: route() on recorded router logits picks the same experts, in order, with the same weights. */
public class ConformanceRoutingTest {
    private final JsonObject g = Conformance.json("generation.json");
    private final int numExperts = g.get("num_experts").getAsInt();
    private final int topK = g.get("top_k").getAsInt();

    @Test
    public void routeCasesMatchPython() {
        int n = 0;
        for (JsonElement e : g.getAsJsonArray("route_cases")) {
            JsonObject c = e.getAsJsonObject();
            boolean renorm = !c.has("renorm") || c.get("renorm").getAsBoolean();
            Router.Routing r = c.has("cmoe")
                    ? Router.routeCmoe(Conformance.floats(c.get("logits")), numExperts, topK,
                            Conformance.floats(c.getAsJsonObject("cmoe").get("bias")),
                            Conformance.floats(c.getAsJsonObject("cmoe").get("scale")))
                    : Router.route(Conformance.floats(c.get("logits")), numExperts, topK, renorm);
            assertArrayEquals("experts, case " + n, Conformance.ints(c.get("experts")), r.experts[0]);
            assertArrayEquals("weights, case " + n, Conformance.floats(c.get("weights")), r.weights[0], 1e-6f);
            n++;
        }
        assertTrue("no route cases", n > 0);
    }

    @Test
    public void everyTracedStepChoosesTheSameExperts() {
        // with the model's sticky rule when it has one: a state per layer, fresh at position 0
        double delta = g.get("sticky_delta").getAsDouble();
        Selection plain = new Selection(topK, "wait", 0.0, 0.0);
        Selection.Sticky[] sticky = new Selection.Sticky[g.get("n_layers").getAsInt()];
        for (int l = 0; l < sticky.length; l++) {
            sticky[l] = new Selection.Sticky(delta, numExperts);
        }
        for (JsonElement e : g.getAsJsonArray("steps")) {
            JsonObject s = e.getAsJsonObject();
            int[][] want = Conformance.intRows(s.get("experts"));
            Selection.Sticky st = sticky[s.get("layer").getAsInt()];
            if (s.get("pos0").getAsInt() == 0) {
                st.reset();
            }
            Router.Routing r = delta > 0
                    ? plain.select(Conformance.matrix(s.get("router_logits")), numExperts, topK, true, null, null,
                            new Selection.Counts(), st).routing
                    : Router.route(Conformance.matrix(s.get("router_logits")), numExperts, topK);
            assertEquals(want.length, r.experts.length);
            for (int t = 0; t < want.length; t++) {
                assertArrayEquals("pos " + (s.get("pos0").getAsInt() + t) + " layer " + s.get("layer"), want[t],
                        r.experts[t]);
            }
        }
    }
}
