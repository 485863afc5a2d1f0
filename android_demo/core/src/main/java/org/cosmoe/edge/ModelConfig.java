package org.cosmoe.edge;

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
    public final int layerMaxTokens;
    public final int expertMaxTokens;

    public ModelConfig(int vocabSize, int dim, int nLayers, int nHeads, int nKvHeads, int headDim, int maxSeqLen,
                       double ropeTheta, int numExperts, int topK, boolean routerRenorm, int layerMaxTokens,
                       int expertMaxTokens) {
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
        this.layerMaxTokens = layerMaxTokens;
        this.expertMaxTokens = expertMaxTokens;
    }

    public static ModelConfig of(Manifest manifest) {
        JsonObject m = Json.object(manifest.json, "model");
        return new ModelConfig((int) Json.longValue(m, "vocab_size"), (int) Json.longValue(m, "dim"),
                (int) Json.longValue(m, "n_layers"), (int) Json.longValue(m, "n_heads"),
                (int) Json.longValue(m, "n_kv_heads"), (int) Json.longValue(m, "head_dim"),
                (int) Json.longValue(m, "max_seq_len"), Json.doubleValue(m, "rope_theta"),
                (int) Json.longValue(m, "num_experts"), (int) Json.longValue(m, "top_k"),
                !m.has("router_renorm") || m.get("router_renorm").getAsBoolean(),
                (int) Json.longValue(manifest.json, "layer_max_tokens"),
                (int) Json.longValue(manifest.json, "expert_max_tokens"));
    }

    /** Query heads per key/value head: the attention mask repeats its rows this many times. */
    public int rep() {
        return nHeads / nKvHeads;
    }
}
