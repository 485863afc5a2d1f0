package org.cosmoe.edge;

import java.util.Arrays;
import java.util.Comparator;
import java.util.Random;

/**
 * generate.py Sampler: greedy at temperature 0 (the first largest logit, as numpy's argmax);
 * else temperature, then top-k, then nucleus (top-p) filtering, drawn from a seeded Random.
 * Only greedy is meant to match Python token for token (the generators differ).
 */
public final class Sampler {
    private final double temperature;
    private final int topK;
    private final double topP;
    private final Random rng;

    public Sampler(double temperature, int topK, double topP, long seed) {
        this.temperature = temperature;
        this.topK = topK;
        this.topP = topP;
        this.rng = new Random(seed);
    }

    public static Sampler greedy() {
        return new Sampler(0, 0, 1.0, 0);
    }

    public int sample(float[] logits) {
        if (temperature <= 0) {
            return argmax(logits);
        }
        int n = logits.length;
        double max = Double.NEGATIVE_INFINITY;
        for (float l : logits) {
            max = Math.max(max, l / temperature);
        }
        final double[] p = new double[n];
        double sum = 0;
        for (int i = 0; i < n; i++) {
            p[i] = Math.exp(logits[i] / temperature - max);
            sum += p[i];
        }
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) {
            p[i] /= sum;
            order[i] = i;
        }
        Arrays.sort(order, new Comparator<Integer>() {  // stable: equal probabilities keep id order
            @Override
            public int compare(Integer a, Integer b) {
                return Double.compare(p[b], p[a]);
            }
        });
        double[] kept = new double[n];
        double cum = 0;
        double total = 0;
        for (int j = 0; j < n; j++) {
            double pj = p[order[j]];
            boolean keep = (topK <= 0 || j < topK) && (topP >= 1.0 || cum < topP);
            cum += pj;
            kept[j] = keep ? pj : 0.0;
            total += kept[j];
        }
        double u = rng.nextDouble() * total;
        double acc = 0;
        for (int j = 0; j < n; j++) {
            acc += kept[j];
            if (kept[j] > 0 && u < acc) {
                return order[j];
            }
        }
        for (int j = n - 1; j >= 0; j--) {  // rounding left u at the very top: the last kept token
            if (kept[j] > 0) {
                return order[j];
            }
        }
        return order[0];
    }

    static int argmax(float[] x) {
        int arg = 0;
        for (int i = 1; i < x.length; i++) {
            if (x[i] > x[arg]) {
                arg = i;
            }
        }
        return arg;
    }
}
