package org.cosmoe.edge;

/**
 * Which experts run for each token (cosmoe_edge/runtime/selection.py, the definition): the router's top-k,
 * then the run's choices: a cache bias on resident experts' logits, the number of experts that run per token
 * (the rest stand in as compressed experts when the artifact has vectors), and what a miss does (wait,
 * compressed, skip); and the model's sticky top-k (Sticky). All off: Router.route's result. The conformance
 * file's selection_cases hold both sides to the same numbers.
 */
public final class Selection {
    public static final String[] ON_MISS = {"wait", "compressed", "skip"};

    public final int expertsPerToken;
    public final String onMiss;
    public final double skipBelow;
    public final double cacheBias;

    /** What the choices did, summed over tokens and layers (the report's selection counts). */
    public static final class Counts {
        public int expertsRun;
        public int compressed;
        public int missesCompressed;
        public int missesSkipped;
        public int biasChanged;
    }

    /**
     * One layer's sticky top-k state (the model's sticky_delta): a token's top-k is taken of its logits plus delta
     * for each expert the previous token selected; prev marks those (zeros at a sequence's start).
     */
    public static final class Sticky {
        public final float delta;
        public final float[] prev;

        public Sticky(double delta, int numExperts) {
            this.delta = (float) delta;
            this.prev = new float[numExperts];
        }

        public void reset() {
            java.util.Arrays.fill(prev, 0f);
        }
    }

    /** Experts by rank (-1: chosen, not run), their weights, and theta (T, D), the running experts' input factor. */
    public static final class Result {
        public final Router.Routing routing;
        /** null: all ones (no stand-ins). */
        public final float[][] theta;

        Result(Router.Routing routing, float[][] theta) {
            this.routing = routing;
            this.theta = theta;
        }
    }

    public Selection(int expertsPerToken, String onMiss, double skipBelow, double cacheBias) {
        this.expertsPerToken = expertsPerToken;
        this.onMiss = onMiss;
        this.skipBelow = skipBelow;
        this.cacheBias = cacheBias;
    }

    public boolean needsResidency() {
        return !onMiss.equals("wait") || cacheBias != 0.0;
    }

    /** selection.py resolve(): the choices checked against the model; an ArtifactException for what it cannot do. */
    public static Selection resolve(ModelConfig cfg, boolean hasVectors, Integer expertsPerToken, String onMiss,
                                    double skipBelow, double cacheBias) {
        if (expertsPerToken != null && expertsPerToken < 1) {
            throw new ArtifactException("--experts-per-token must be at least 1, not " + expertsPerToken, "bad_option");
        }
        if (!java.util.Arrays.asList(ON_MISS).contains(onMiss)) {
            throw new ArtifactException("unknown --on-miss '" + onMiss + "'; choose wait, compressed, skip", "bad_option");
        }
        if (!(skipBelow >= 0) || !(cacheBias >= 0)) {
            throw new ArtifactException("--skip-below and --cache-bias must be >= 0", "bad_option");
        }
        int k = expertsPerToken != null ? expertsPerToken : (cfg.kMain > 0 ? cfg.kMain : cfg.topK);
        if (k > cfg.topK) {
            throw new ArtifactException("--experts-per-token must be between 1 and the model's top-k (" + cfg.topK
                    + "), not " + k, "bad_option");
        }
        if (onMiss.equals("compressed") && !hasVectors) {
            throw new ArtifactException("--on-miss compressed needs compressed experts, and this artifact has none",
                    "no_vectors");
        }
        Selection s = new Selection(k, onMiss, skipBelow, cacheBias);
        if (cfg.cmoe() && (s.needsResidency() || k != cfg.topK)) {
            throw new ArtifactException("--experts-per-token, --on-miss and --cache-bias need a softmax router; "
                    + "this model's router is CMoE's (edge-carve)", "bad_option");
        }
        return s;
    }

    /**
     * {@code logits} row-major (T, E); {@code vectors} (E, D) or null; {@code resident} (E) when
     * needsResidency(), else null.
     */
    public Result select(float[] logits, int numExperts, int topK, boolean renorm, float[][] vectors,
                         boolean[] resident, Counts counts) {
        return select(logits, numExperts, topK, renorm, vectors, resident, counts, null);
    }

    /** As above, with the layer's sticky state (null: the model has none), updated to the last token's choice. */
    public Result select(float[] logits, int numExperts, int topK, boolean renorm, float[][] vectors,
                         boolean[] resident, Counts counts, Sticky sticky) {
        int tokens = logits.length / numExperts;
        int k = expertsPerToken;
        int[][] experts;
        if (cacheBias != 0.0 || sticky != null) {
            // row after row (selection.py biased_top_k): a sticky row depends on the row before's choice
            experts = new int[tokens][];
            for (int t = 0; t < tokens; t++) {
                float[] z = java.util.Arrays.copyOfRange(logits, t * numExperts, (t + 1) * numExperts);
                float[] biased = new float[numExperts];
                for (int e = 0; e < numExperts; e++) {
                    z[e] += sticky != null ? sticky.delta * sticky.prev[e] : 0f;
                    biased[e] = z[e] + (cacheBias != 0.0 && resident[e] ? (float) cacheBias : 0f);
                }
                experts[t] = Router.route(biased, numExperts, topK, renorm).experts[0];
                if (cacheBias != 0.0) {
                    int[] a = experts[t].clone();
                    int[] b = Router.route(z, numExperts, topK, renorm).experts[0];
                    java.util.Arrays.sort(a);
                    java.util.Arrays.sort(b);
                    counts.biasChanged += java.util.Arrays.equals(a, b) ? 0 : 1;
                }
                if (sticky != null) {
                    sticky.reset();
                    for (int e : experts[t]) {
                        sticky.prev[e] = 1f;
                    }
                }
            }
        } else {
            Router.Routing r = Router.route(logits, numExperts, topK, renorm);
            if (k == topK && onMiss.equals("wait")) {
                counts.expertsRun += tokens * topK;
                return new Result(r, null);
            }
            experts = r.experts;
        }
        int dim = vectors != null ? vectors[0].length : 0;
        float[] probs = new float[numExperts];
        float[][] weights = new float[tokens][];
        int[][] run = new int[tokens][];
        float[][] theta = null;
        for (int t = 0; t < tokens; t++) {
            Router.softmax(logits, t * numExperts, numExperts, probs);
            float[] p = new float[topK];
            boolean[] runs = new boolean[topK];
            boolean[] aux = new boolean[topK];
            for (int j = 0; j < topK; j++) {
                p[j] = probs[experts[t][j]];
                runs[j] = j < k;
                aux[j] = !runs[j] && vectors != null;
            }
            if (!onMiss.equals("wait")) {
                float[] wn = renorm ? normalised(masked(p, runs)) : masked(p, runs);
                for (int j = 1; j < topK; j++) {  // a token's first-ranked expert always runs
                    if (!runs[j] || resident[experts[t][j]]) {
                        continue;
                    }
                    if (onMiss.equals("skip")) {
                        if (wn[j] < skipBelow) {
                            runs[j] = false;
                            counts.missesSkipped++;
                        }
                    } else {
                        runs[j] = false;
                        aux[j] = true;
                        counts.missesCompressed++;
                    }
                }
            }
            weights[t] = renorm ? normalised(masked(p, runs)) : masked(p, runs);
            run[t] = new int[topK];
            boolean anyAux = false;
            for (int j = 0; j < topK; j++) {
                run[t][j] = runs[j] ? experts[t][j] : -1;
                counts.expertsRun += runs[j] ? 1 : 0;
                counts.compressed += aux[j] ? 1 : 0;
                anyAux |= aux[j];
            }
            if (anyAux) {
                if (theta == null) {
                    theta = new float[tokens][];
                    for (int i = 0; i < tokens; i++) {
                        theta[i] = ones(dim);
                    }
                }
                float[] a = masked(p, aux);
                float total = NumpySum.sum(a, 0, topK);
                float[] th = new float[dim];
                for (int j = 0; j < topK; j++) {
                    if (aux[j]) {
                        float w = a[j] / total;
                        float[] v = vectors[experts[t][j]];
                        for (int c = 0; c < dim; c++) {
                            th[c] += w * v[c];
                        }
                    }
                }
                theta[t] = th;
            }
        }
        return new Result(new Router.Routing(run, weights), theta);
    }

    private static float[] masked(float[] p, boolean[] keep) {
        float[] out = new float[p.length];
        for (int j = 0; j < p.length; j++) {
            out[j] = keep[j] ? p[j] : 0f;
        }
        return out;
    }

    private static float[] normalised(float[] w) {
        float sum = NumpySum.sum(w, 0, w.length);
        float[] out = new float[w.length];
        for (int j = 0; j < w.length; j++) {
            out[j] = w[j] / sum;
        }
        return out;
    }

    private static float[] ones(int n) {
        float[] out = new float[n];
        java.util.Arrays.fill(out, 1f);
        return out;
    }
}
