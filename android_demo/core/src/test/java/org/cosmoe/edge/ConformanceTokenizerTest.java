package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Test;

/** tokenizer_cases.json: the HF tokenizers library's ids and decoded text for each text. */
public class ConformanceTokenizerTest {
    private final Tokenizer tok = Tokenizer.fromFile(Conformance.file("tokenizer.json"));

    @Test
    public void encodesAndDecodesEveryCaseAsPython() {
        JsonObject vectors = Conformance.json("tokenizer_cases.json");
        int n = 0;
        for (JsonElement e : vectors.getAsJsonArray("cases")) {
            JsonObject c = e.getAsJsonObject();
            String text = c.get("text").getAsString();
            int[] ids = Conformance.ints(c.get("ids"));
            assertArrayEquals("ids of " + text, ids, tok.encode(text));
            assertEquals("decoded " + text, c.get("decoded").getAsString(), tok.decode(ids));
            n++;
        }
        assertTrue("no tokenizer cases", n > 0);
    }

    @Test
    public void endOfTextIsTheManifestsEosId() {
        JsonObject vectors = Conformance.json("tokenizer_cases.json");
        assertEquals(Integer.valueOf(vectors.get("eos_id").getAsInt()), tok.tokenToId("<|endoftext|>"));
    }

    @Test
    public void streamsTextWithoutBrokenCharacters() {
        for (JsonElement e : Conformance.json("tokenizer_cases.json").getAsJsonArray("cases")) {
            JsonObject c = e.getAsJsonObject();
            final StringBuilder shown = new StringBuilder();
            TextStream stream = new TextStream(tok, new TextStream.Sink() {
                @Override
                public void write(String text) {
                    shown.append(text);
                }
            });
            for (int id : Conformance.ints(c.get("ids"))) {
                stream.onToken(id);
            }
            assertEquals(c.get("decoded").getAsString(), shown.toString());
        }
    }
}
