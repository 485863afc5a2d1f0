package org.cosmoe.edge;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;

/** The shape facts the decode loop needs: the manifest's "model" plus the programs' token limits. */
public final class ModelConfig {
    public final int vocabSize;
    public final int dim;
    public final int nLayers;
    public final int nHeads;
    public final int nKvHeads;
    public final int headDim;
    public final int maxSeqLen;
    public final double ropeTheta;
    public final int numExperts;
    public final int topK;
    /** The chosen experts' weights renormalised over the top_k (the manifest's model.router_renorm; absent: true). */
    public final boolean routerRenorm;
    /**
     * The manifest's routing.kind "cmoe" (a CMoE-carved model): per layer, the selection bias and the weight
     * scale of Router.routeCmoe; both null for the softmax router.
     */
    public final float[][] selectionBias;
    public final float[][] weightScale;
    public final int layerMaxTokens;
    public final int expertMaxTokens;
    /** Compressed experts: the experts that run per token by default, the rest standing in (model.k_main; 0: none). */
    public final int kMain;
    /** Sticky top-k (model.sticky_delta; 0: off): Selection.Sticky, one per layer. */
    public final double stickyDelta;

    public ModelConfig(int vocabSize, int dim, int nLayers, int nHeads, int nKvHeads, int headDim, int maxSeqLen,
                       double ropeTheta, int numExperts, int topK, boolean routerRenorm, float[][] selectionBias,
                       float[][] weightScale, int layerMaxTokens, int expertMaxTokens, int kMain,
                       double stickyDelta) {
        this.vocabSize = vocabSize;
        this.dim = dim;
        this.nLayers = nLayers;
        this.nHeads = nHeads;
        this.nKvHeads = nKvHeads;
        this.headDim = headDim;
        this.maxSeqLen = maxSeqLen;
        this.ropeTheta = ropeTheta;
        this.numExperts = numExperts;
        this.topK = topK;
        this.routerRenorm = routerRenorm;
        this.selectionBias = selectionBias;
        this.weightScale = weightScale;
        this.layerMaxTokens = layerMaxTokens;
        this.expertMaxTokens = expertMaxTokens;
        this.kMain = kMain;
        this.stickyDelta = stickyDelta;
    }

    public static ModelConfig of(Manifest manifest) {
        JsonObject m = Json.object(manifest.json, "model");
        int nLayers = (int) Json.longValue(m, "n_layers");
        int numExperts = (int) Json.longValue(m, "num_experts");
        float[][] bias = null;
        float[][] scale = null;
        if (manifest.json.has("routing")) {
            JsonObject r = Json.object(manifest.json, "routing");
            String kind = Json.string(r, "kind");
            if (!kind.equals("cmoe")) {
                throw new ArtifactException("manifest: unknown routing kind '" + kind + "'");
            }
            bias = perLayer(r, "selection_bias", nLayers, numExperts);
            scale = perLayer(r, "weight_scale", nLayers, numExperts);
        }
        return new ModelConfig((int) Json.longValue(m, "vocab_size"), (int) Json.longValue(m, "dim"),
                (int) Json.longValue(m, "n_layers"), (int) Json.longValue(m, "n_heads"),
                (int) Json.longValue(m, "n_kv_heads"), (int) Json.longValue(m, "head_dim"),
                (int) Json.longValue(m, "max_seq_len"), Json.doubleValue(m, "rope_theta"),
                (int) Json.longValue(m, "num_experts"), (int) Json.longValue(m, "top_k"),
                !m.has("router_renorm") || m.get("router_renorm").getAsBoolean(), bias, scale,
                (int) Json.longValue(manifest.json, "layer_max_tokens"),
                (int) Json.longValue(manifest.json, "expert_max_tokens"),
                m.has("k_main") ? (int) Json.longValue(m, "k_main") : 0,
                m.has("sticky_delta") ? Json.doubleValue(m, "sticky_delta") : 0.0);
    }

    private static float[][] perLayer(JsonObject r, String key, int nLayers, int numExperts) {
        JsonArray rows = Json.get(r, key).getAsJsonArray();
        if (rows.size() != nLayers) {
            throw new ArtifactException("manifest: routing." + key + " should have one row per layer");
        }
        float[][] out = new float[nLayers][numExperts];
        for (int l = 0; l < nLayers; l++) {
            JsonArray row = rows.get(l).getAsJsonArray();
            if (row.size() != numExperts) {
                throw new ArtifactException("manifest: routing." + key + " rows should have num_experts values");
            }
            for (int e = 0; e < numExperts; e++) {
                out[l][e] = row.get(e).getAsFloat();
            }
        }
        return out;
    }

    public boolean cmoe() {
        return selectionBias != null;
    }

    /** The layer's routing of row-major (T, E) router logits, as the manifest states it. */
    public Router.Routing route(int layer, float[] logits) {
        return cmoe() ? Router.routeCmoe(logits, numExperts, topK, selectionBias[layer], weightScale[layer])
                : Router.route(logits, numExperts, topK, routerRenorm);
    }

    /** Query heads per key/value head: the attention mask repeats its rows this many times. */
    public int rep() {
        return nHeads / nKvHeads;
    }
}
