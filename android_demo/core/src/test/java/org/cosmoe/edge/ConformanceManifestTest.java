package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Base64;
import java.util.Map;

/** manifest_cases.json: each defective artifact fails with Python's error kind (and message), the valid one loads. */
public class ConformanceManifestTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    @Test
    public void sameErrorKindAsPythonForEveryCase() throws IOException {
        JsonObject vectors = Conformance.json("manifest_cases.json");
        String backend = vectors.get("backend").getAsString();
        int n = 0;
        for (JsonElement ce : vectors.getAsJsonArray("cases")) {
            JsonObject c = ce.getAsJsonObject();
            String name = c.get("name").getAsString();
            File root = tmp.newFolder(name);
            Files.write(new File(root, "manifest.json").toPath(),
                    c.get("manifest_text").getAsString().getBytes(StandardCharsets.UTF_8));
            for (Map.Entry<String, JsonElement> f : c.getAsJsonObject("files").entrySet()) {
                File file = new File(root, f.getKey());
                file.getParentFile().mkdirs();
                Files.write(file.toPath(), Base64.getDecoder().decode(f.getValue().getAsString()));
            }
            JsonElement expected = c.get("expected_error");
            try {
                Manifest m = Manifest.load(root);
                for (JsonElement e : m.backendSection(backend).getAsJsonArray("experts")) {
                    m.checkFile(FileEntry.of(e), true);
                }
                if (expected != null && !expected.isJsonNull()) {
                    fail(name + ": loaded, Python raised " + expected.getAsString());
                }
            } catch (ArtifactException e) {
                if (expected == null || expected.isJsonNull()) {
                    throw new AssertionError(name + ": Python loads it, Java raised " + e.kind() + ": "
                            + e.getMessage());
                }
                assertEquals(name, expected.getAsString(), e.kind());
                if (!e.kind().equals("bad_json")) {  // the JSON parser's own wording differs
                    assertEquals(name, c.get("expected_message").getAsString(),
                            e.getMessage().replace(root.toString(), "<artifact>"));
                }
            }
            n++;
        }
        assertTrue("no manifest cases", n > 0);
    }
}
