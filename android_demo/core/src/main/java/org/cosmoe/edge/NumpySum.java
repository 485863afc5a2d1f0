package org.cosmoe.edge;

/**
 * numpy's float32 sum over a contiguous row (pairwise summation with eight accumulators), so
 * softmax denominators round exactly as the Python runtime's do.
 */
final class NumpySum {
    private static final int BLOCK = 128;

    private NumpySum() {
    }

    static float sum(float[] a, int off, int n) {
        if (n < 8) {
            float res = -0.0f;
            for (int i = 0; i < n; i++) {
                res += a[off + i];
            }
            return res;
        }
        if (n <= BLOCK) {
            float[] r = new float[8];
            for (int j = 0; j < 8; j++) {
                r[j] = a[off + j];
            }
            int i;
            for (i = 8; i < n - (n % 8); i += 8) {
                for (int j = 0; j < 8; j++) {
                    r[j] += a[off + i + j];
                }
            }
            float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) {
                res += a[off + i];
            }
            return res;
        }
        int half = n / 2;
        half -= half % 8;
        return sum(a, off, half) + sum(a, off + half, n - half);
    }
}
