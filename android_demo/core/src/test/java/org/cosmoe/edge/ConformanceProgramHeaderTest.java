package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.Base64;

/** program_header_cases.json: the same verdict, and message, as Python's check before loading a .pte. */
public class ConformanceProgramHeaderTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    @Test
    public void sameVerdictAsPython() throws IOException {
        JsonObject h = Conformance.json("program_header_cases.json");
        File path = new File(tmp.getRoot(), h.get("file_name").getAsString());
        int refused = 0;
        for (JsonElement e : h.getAsJsonArray("cases")) {
            JsonObject c = e.getAsJsonObject();
            Files.write(path.toPath(), Base64.getDecoder().decode(c.get("bytes").getAsString()));
            String name = c.get("name").getAsString();
            String kind = null;
            try {
                PteHeader.check(path);
            } catch (ArtifactException ex) {
                kind = ex.kind();
                assertEquals(name, c.get("expected_message").getAsString(), ex.getMessage());
                refused++;
            }
            if (c.get("expected_error").isJsonNull()) {
                assertNull(name, kind);
            } else {
                assertEquals(name, c.get("expected_error").getAsString(), kind);
            }
        }
        assertTrue("no damaged header among the cases", refused > 0);
    }
}
