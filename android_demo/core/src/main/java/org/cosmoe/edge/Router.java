package org.cosmoe.edge;

/**
 * engine.py route(): softmax over experts (float32, as numpy computes it), the top_k experts by
 * descending probability with ties to the lower expert id (a stable argsort), and their weights
 * renormalised over the k (or, for a model whose router_renorm is false, the probabilities themselves).
 */
public final class Router {
    /** For T tokens: experts[t][j] and weights[t][j], j in 0..k-1. */
    public static final class Routing {
        public final int[][] experts;
        public final float[][] weights;

        Routing(int[][] experts, float[][] weights) {
            this.experts = experts;
            this.weights = weights;
        }
    }

    private Router() {
    }

    /** {@code logits} is row-major (T, E); weights renormalised over the k. */
    public static Routing route(float[] logits, int numExperts, int topK) {
        return route(logits, numExperts, topK, true);
    }

    /** {@code logits} is row-major (T, E). */
    public static Routing route(float[] logits, int numExperts, int topK, boolean renorm) {
        int tokens = logits.length / numExperts;
        int[][] experts = new int[tokens][];
        float[][] weights = new float[tokens][];
        float[] probs = new float[numExperts];
        for (int t = 0; t < tokens; t++) {
            softmax(logits, t * numExperts, numExperts, probs);
            experts[t] = topK(probs, topK);
            float[] w = new float[topK];
            for (int j = 0; j < topK; j++) {
                w[j] = probs[experts[t][j]];
            }
            if (renorm) {
                float sum = NumpySum.sum(w, 0, topK);
                for (int j = 0; j < topK; j++) {
                    w[j] = w[j] / sum;
                }
            }
            weights[t] = w;
        }
        return new Routing(experts, weights);
    }

    /**
     * routing.py route_cmoe(): p = softmax(scores); the top_k of p + bias (ties to the lower expert id),
     * weighted 1 + scale * p. {@code scores} is row-major (T, E).
     */
    public static Routing routeCmoe(float[] scores, int numExperts, int topK, float[] bias, float[] scale) {
        int tokens = scores.length / numExperts;
        int[][] experts = new int[tokens][];
        float[][] weights = new float[tokens][];
        float[] probs = new float[numExperts];
        float[] biased = new float[numExperts];
        for (int t = 0; t < tokens; t++) {
            softmax(scores, t * numExperts, numExperts, probs);
            for (int e = 0; e < numExperts; e++) {
                biased[e] = probs[e] + bias[e];
            }
            experts[t] = topK(biased, topK);
            float[] w = new float[topK];
            for (int j = 0; j < topK; j++) {
                int e = experts[t][j];
                w[j] = 1f + probs[e] * scale[e];
            }
            weights[t] = w;
        }
        return new Routing(experts, weights);
    }

    static void softmax(float[] x, int off, int n, float[] out) {
        float max = Float.NEGATIVE_INFINITY;
        for (int i = 0; i < n; i++) {
            max = Math.max(max, x[off + i]);
        }
        for (int i = 0; i < n; i++) {
            out[i] = (float) Math.exp(x[off + i] - max);
        }
        float sum = NumpySum.sum(out, 0, n);
        for (int i = 0; i < n; i++) {
            out[i] = out[i] / sum;
        }
    }

    /** Indices of the k largest values, largest first; equal values keep index order. */
    static int[] topK(float[] p, int k) {
        int[] best = new int[k];
        boolean[] taken = new boolean[p.length];
        for (int j = 0; j < k; j++) {
            int arg = -1;
            for (int i = 0; i < p.length; i++) {
                if (!taken[i] && (arg < 0 || p[i] > p[arg])) {
                    arg = i;
                }
            }
            taken[arg] = true;
            best[j] = arg;
        }
        return best;
    }
}
