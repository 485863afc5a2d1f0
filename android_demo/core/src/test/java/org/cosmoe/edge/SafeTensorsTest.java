package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.fail;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

/** The safetensors reader and the embedding rows it feeds (fp32, and int8 rows times per-row scale). */
public class SafeTensorsTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    /** An int8 (3, 2) 'weight' and an F32 (3,) 'scale', as cosmoe_edge/export/quantize.py writes them. */
    private static byte[] int8Embedding() {
        String header = "{\"scale\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                + "\"weight\":{\"dtype\":\"I8\",\"shape\":[3,2],\"data_offsets\":[12,18]},"
                + "\"__metadata__\":{\"format\":\"np\"}}";
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + 18).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        b.putFloat(0.5f).putFloat(0.25f).putFloat(-2f);
        b.put(new byte[] {1, -1, 127, -127, 3, 0});
        return b.array();
    }

    @Test
    public void int8RowsAreScaledPerRow() throws IOException {
        File f = tmp.newFile("embedding.safetensors");
        Files.write(f.toPath(), int8Embedding());
        Embedding e = Embedding.load(f);
        assertEquals(3, e.vocab);
        assertEquals(2, e.dim);
        assertArrayEquals(new float[] {-6f, -0f, 0.5f, -0.5f, 31.75f, -31.75f}, e.rows(new int[] {2, 0, 1}), 0f);
    }

    @Test
    public void fp32RowsAreReadAsStored() throws IOException {
        java.util.Map<String, float[]> t = new java.util.LinkedHashMap<>();
        t.put("weight", new float[] {1, 2, 3, 4, 5, 6});
        File f = tmp.newFile("e.safetensors");
        Files.write(f.toPath(), TestArtifact.safetensors(t, new long[] {2, 3}));
        Embedding e = Embedding.load(f);
        assertArrayEquals(new float[] {4, 5, 6, 1, 2, 3}, e.rows(new int[] {1, 0}), 0f);
    }

    @Test
    public void truncatedOrGarbledFilesAreArtifactErrors() {
        byte[] good = int8Embedding();
        byte[][] bad = {new byte[5], java.util.Arrays.copyOf(good, good.length - 4), garble(good)};
        for (byte[] b : bad) {
            try {
                SafeTensors.parse(b, "x.safetensors");
                fail("accepted a broken file");
            } catch (ArtifactException expected) {
                assertEquals("artifact", expected.kind());
            }
        }
    }

    private static byte[] garble(byte[] good) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(good, 0, 8);
        out.write('[');
        out.write(good, 9, good.length - 9);
        return out.toByteArray();
    }
}
