package org.cosmoe.edge;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.Arrays;

/**
 * A float32 tensor crossing the program boundary. Inputs the runtime owns (the KV cache's past rows,
 * masks, RoPE rows) live in direct native-order buffers of exactly numel floats (the past rows are a
 * {@link #firstRows} view of the cache's buffer), so an ExecuTorch runner can hand them to the
 * program without a copy; outputs may be heap arrays.
 */
public final class FloatTensor {
    public final FloatBuffer data;
    public final long[] shape;

    private FloatTensor(FloatBuffer data, long[] shape) {
        if (data.capacity() != numel(shape)) {
            throw new IllegalArgumentException("buffer of " + data.capacity() + " floats for shape "
                    + Arrays.toString(shape));
        }
        this.data = data;
        this.shape = shape;
    }

    /** A zeroed direct buffer of this shape. */
    public static FloatTensor direct(long... shape) {
        int n = (int) numel(shape);
        return new FloatTensor(ByteBuffer.allocateDirect(n * 4).order(ByteOrder.nativeOrder()).asFloatBuffer(),
                shape.clone());
    }

    /** A heap tensor over {@code values} (not copied). */
    public static FloatTensor of(float[] values, long... shape) {
        return new FloatTensor(FloatBuffer.wrap(values), shape.clone());
    }

    public static long numel(long[] shape) {
        long n = 1;
        for (long s : shape) {
            n *= s;
        }
        return n;
    }

    public int numel() {
        return data.capacity();
    }

    public long dim(int i) {
        return shape[i];
    }

    /**
     * The first {@code n} entries along dim 0, (n, shape[1], ...), as a view sharing this tensor's
     * memory: direct (and in the same byte order) when this one is, with exactly numel floats.
     */
    public FloatTensor firstRows(int n) {
        long[] s = shape.clone();
        if (s.length == 0 || n < 0 || n > s[0]) {
            throw new IllegalArgumentException(n + " rows of shape " + Arrays.toString(shape));
        }
        s[0] = n;
        FloatBuffer d = data.duplicate();
        d.clear();
        d.limit((int) numel(s));
        return new FloatTensor(d.slice(), s);
    }

    /** The values as an array: the backing array when there is one, else a copy. */
    public float[] toArray() {
        if (data.hasArray() && data.arrayOffset() == 0 && data.array().length == data.capacity()) {
            return data.array();
        }
        float[] out = new float[data.capacity()];
        FloatBuffer d = data.duplicate();
        d.clear();
        d.get(out);
        return out;
    }

    /** Writes values[from, from+len) at element offset {@code at}. */
    public void put(int at, float[] values, int from, int len) {
        FloatBuffer d = data.duplicate();
        d.clear();
        d.position(at);
        d.put(values, from, len);
    }
}
