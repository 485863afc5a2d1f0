package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.HashMap;
import java.util.Map;

/**
 * A .safetensors file: an 8-byte little-endian header length, a JSON header naming each tensor's
 * dtype, shape and byte range, then the data. Only the dtypes the exporter writes (F32, I8).
 */
public final class SafeTensors {
    private static final class Info {
        final String dtype;
        final long[] shape;
        final int begin;
        final int end;

        Info(String dtype, long[] shape, int begin, int end) {
            this.dtype = dtype;
            this.shape = shape;
            this.begin = begin;
            this.end = end;
        }
    }

    private final Map<String, Info> tensors = new HashMap<>();
    private final ByteBuffer data;

    private SafeTensors(ByteBuffer data) {
        this.data = data;
    }

    public static SafeTensors read(File file) {
        byte[] bytes;
        try {
            bytes = Files.readAllBytes(file.toPath());
        } catch (IOException e) {
            throw new ArtifactException("cannot read " + file.getName() + " (" + e.getMessage() + ")");
        }
        return parse(bytes, file.getName());
    }

    static SafeTensors parse(byte[] bytes, String name) {
        ByteBuffer buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        String bad = name + " is not a valid safetensors file";
        if (bytes.length < 8) {
            throw new ArtifactException(bad);
        }
        long headerLen = buf.getLong(0);
        if (headerLen < 2 || headerLen > bytes.length - 8) {
            throw new ArtifactException(bad);
        }
        int start = 8 + (int) headerLen;
        buf.position(start);
        SafeTensors st = new SafeTensors(buf.slice().order(ByteOrder.LITTLE_ENDIAN));
        int dataLen = bytes.length - start;
        try {
            JsonObject header = JsonParser.parseString(new String(bytes, 8, (int) headerLen, StandardCharsets.UTF_8))
                    .getAsJsonObject();
            for (Map.Entry<String, JsonElement> e : header.entrySet()) {
                if (e.getKey().equals("__metadata__")) {
                    continue;
                }
                JsonObject t = e.getValue().getAsJsonObject();
                long[] shape = new long[t.getAsJsonArray("shape").size()];
                long numel = 1;
                for (int i = 0; i < shape.length; i++) {
                    shape[i] = t.getAsJsonArray("shape").get(i).getAsLong();
                    numel *= shape[i];
                }
                String dtype = t.get("dtype").getAsString();
                long begin = t.getAsJsonArray("data_offsets").get(0).getAsLong();
                long end = t.getAsJsonArray("data_offsets").get(1).getAsLong();
                if (begin < 0 || end < begin || end > dataLen || end - begin != numel * elementSize(dtype)) {
                    throw new ArtifactException(bad + " (tensor " + e.getKey() + " has a bad byte range)");
                }
                st.tensors.put(e.getKey(), new Info(dtype, shape, (int) begin, (int) end));
            }
        } catch (RuntimeException e) {
            if (e instanceof ArtifactException) {
                throw e;
            }
            throw new ArtifactException(bad + " (" + e.getMessage() + ")");
        }
        return st;
    }

    private static int elementSize(String dtype) {
        switch (dtype) {
            case "F32":
                return 4;
            case "I8":
                return 1;
            default:
                throw new ArtifactException("unsupported safetensors dtype " + dtype + " (this runtime reads F32, I8)");
        }
    }

    public boolean has(String name) {
        return tensors.containsKey(name);
    }

    public long[] shape(String name) {
        return info(name).shape.clone();
    }

    public String dtype(String name) {
        return info(name).dtype;
    }

    public float[] floats(String name) {
        Info t = typed(name, "F32");
        float[] out = new float[(t.end - t.begin) / 4];
        ByteBuffer b = data.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        b.position(t.begin);
        b.asFloatBuffer().get(out);
        return out;
    }

    public byte[] int8(String name) {
        Info t = typed(name, "I8");
        byte[] out = new byte[t.end - t.begin];
        ByteBuffer b = data.duplicate();
        b.position(t.begin);
        b.get(out);
        return out;
    }

    private Info info(String name) {
        Info t = tensors.get(name);
        if (t == null) {
            throw new ArtifactException("the safetensors file has no tensor '" + name + "'");
        }
        return t;
    }

    private Info typed(String name, String dtype) {
        Info t = info(name);
        if (!t.dtype.equals(dtype)) {
            throw new ArtifactException("tensor '" + name + "' is " + t.dtype + ", expected " + dtype);
        }
        return t;
    }
}
