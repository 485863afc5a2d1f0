package org.cosmoe.edge;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The byte-level BPE tokenizer of a tokenizer.json written by the HF tokenizers library (what
 * cosmoe_edge/model/tokenizer.py trains): added tokens such as <|endoftext|> split out first, the ByteLevel
 * pre-tokenizer (GPT-2 regex, bytes mapped to printable characters), merges applied by rank;
 * decoding skips special tokens and maps the characters back to bytes.
 */
public final class Tokenizer {
    /** GPT-2's split; \s and the classes are Unicode-aware as in the Rust library's regex engine. */
    private static final Pattern GPT2 = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            Pattern.UNICODE_CHARACTER_CLASS);
    private static final char[] BYTE_CHAR = new char[256];
    private static final Map<Character, Integer> CHAR_BYTE = new HashMap<>();

    static {
        // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest shift past 255
        int shifted = 0;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            BYTE_CHAR[b] = (char) (printable ? b : 256 + shifted++);
            CHAR_BYTE.put(BYTE_CHAR[b], b);
        }
    }

    private static final class Added {
        final String content;
        final int id;
        final boolean special;

        Added(String content, int id, boolean special) {
            this.content = content;
            this.id = id;
            this.special = special;
        }
    }

    private final Map<String, Integer> vocab = new HashMap<>();
    private final Map<String, Integer> ranks = new HashMap<>();
    private final List<Added> added = new ArrayList<>();
    private final Map<Integer, Added> addedById = new HashMap<>();
    private final String[] idToToken;
    private final boolean addPrefixSpace;
    private final boolean useRegex;
    private final Map<String, int[]> wordCache = new HashMap<>();

    private Tokenizer(JsonObject json) {
        JsonObject model = json.getAsJsonObject("model");
        JsonElement pre = json.get("pre_tokenizer");
        if (model == null || !"BPE".equals(model.get("type").getAsString()) || pre == null || !pre.isJsonObject()
                || !"ByteLevel".equals(pre.getAsJsonObject().get("type").getAsString())) {
            throw new IllegalArgumentException("not a byte-level BPE tokenizer");
        }
        JsonObject preObj = pre.getAsJsonObject();
        addPrefixSpace = preObj.has("add_prefix_space") && preObj.get("add_prefix_space").getAsBoolean();
        useRegex = !preObj.has("use_regex") || preObj.get("use_regex").getAsBoolean();
        int maxId = -1;
        for (Map.Entry<String, JsonElement> e : model.getAsJsonObject("vocab").entrySet()) {
            vocab.put(e.getKey(), e.getValue().getAsInt());
            maxId = Math.max(maxId, e.getValue().getAsInt());
        }
        JsonArray merges = model.getAsJsonArray("merges");
        for (int i = 0; i < merges.size(); i++) {
            JsonElement m = merges.get(i);
            String a;
            String b;
            if (m.isJsonArray()) {  // tokenizers >= 0.20: ["a", "b"]
                a = m.getAsJsonArray().get(0).getAsString();
                b = m.getAsJsonArray().get(1).getAsString();
            } else {  // older files: "a b"
                String[] parts = m.getAsString().split(" ", 2);
                a = parts[0];
                b = parts[1];
            }
            String key = pair(a, b);
            if (!ranks.containsKey(key)) {
                ranks.put(key, i);
            }
        }
        JsonElement addedJson = json.get("added_tokens");
        if (addedJson != null && addedJson.isJsonArray()) {
            for (JsonElement e : addedJson.getAsJsonArray()) {
                JsonObject o = e.getAsJsonObject();
                Added a = new Added(o.get("content").getAsString(), o.get("id").getAsInt(),
                        o.has("special") && o.get("special").getAsBoolean());
                added.add(a);
                addedById.put(a.id, a);
                maxId = Math.max(maxId, a.id);
            }
        }
        Collections.sort(added, new Comparator<Added>() {  // longest first: leftmost-longest matching
            @Override
            public int compare(Added x, Added y) {
                return Integer.compare(y.content.length(), x.content.length());
            }
        });
        idToToken = new String[maxId + 1];
        for (Map.Entry<String, Integer> e : vocab.entrySet()) {
            idToToken[e.getValue()] = e.getKey();
        }
    }

    public static Tokenizer fromJson(String json) {
        return new Tokenizer(JsonParser.parseString(json).getAsJsonObject());
    }

    /** As run.py: a file the library cannot read is "not a valid tokenizer file". */
    public static Tokenizer fromFile(File file) {
        try {
            return fromJson(new String(Files.readAllBytes(file.toPath()), StandardCharsets.UTF_8));
        } catch (IOException | RuntimeException e) {
            throw new ArtifactException(file.getName() + " is not a valid tokenizer file");
        }
    }

    public Integer tokenToId(String token) {
        for (Added a : added) {
            if (a.content.equals(token)) {
                return a.id;
            }
        }
        return vocab.get(token);
    }

    public int[] encode(String text) {
        List<Integer> ids = new ArrayList<>();
        int start = 0;
        int i = 0;
        while (i < text.length()) {
            Added match = addedAt(text, i);
            if (match == null) {
                i++;
                continue;
            }
            encodeSegment(text.substring(start, i), ids);
            ids.add(match.id);
            i += match.content.length();
            start = i;
        }
        encodeSegment(text.substring(start), ids);
        int[] out = new int[ids.size()];
        for (int j = 0; j < out.length; j++) {
            out[j] = ids.get(j);
        }
        return out;
    }

    private Added addedAt(String text, int i) {
        for (Added a : added) {
            if (text.startsWith(a.content, i)) {
                return a;
            }
        }
        return null;
    }

    private void encodeSegment(String segment, List<Integer> ids) {
        if (segment.isEmpty()) {
            return;
        }
        if (addPrefixSpace && !segment.startsWith(" ")) {
            segment = " " + segment;
        }
        if (!useRegex) {
            addWord(segment, ids);
            return;
        }
        Matcher m = GPT2.matcher(segment);
        int last = 0;
        while (m.find()) {
            if (m.start() > last) {
                addWord(segment.substring(last, m.start()), ids);
            }
            addWord(m.group(), ids);
            last = m.end();
        }
        if (last < segment.length()) {
            addWord(segment.substring(last), ids);
        }
    }

    private void addWord(String word, List<Integer> ids) {
        int[] cached = wordCache.get(word);
        if (cached == null) {
            cached = bpe(word);
            if (wordCache.size() > 50_000) {
                wordCache.clear();
            }
            wordCache.put(word, cached);
        }
        for (int id : cached) {
            ids.add(id);
        }
    }

    /** The word's UTF-8 bytes as byte characters, merged pair by pair, lowest rank (then leftmost) first. */
    private int[] bpe(String word) {
        List<String> symbols = new ArrayList<>();
        for (byte b : word.getBytes(StandardCharsets.UTF_8)) {
            symbols.add(String.valueOf(BYTE_CHAR[b & 0xff]));
        }
        while (symbols.size() > 1) {
            int best = -1;
            int bestRank = Integer.MAX_VALUE;
            for (int i = 0; i + 1 < symbols.size(); i++) {
                Integer r = ranks.get(pair(symbols.get(i), symbols.get(i + 1)));
                if (r != null && r < bestRank) {
                    bestRank = r;
                    best = i;
                }
            }
            if (best < 0) {
                break;
            }
            symbols.set(best, symbols.get(best) + symbols.remove(best + 1));
        }
        List<Integer> out = new ArrayList<>();
        for (String s : symbols) {
            Integer id = vocab.get(s);
            if (id != null) {  // no unk token: a symbol outside the vocabulary is dropped
                out.add(id);
            }
        }
        int[] ids = new int[out.size()];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = out.get(i);
        }
        return ids;
    }

    /** Text of the ids, special tokens skipped (the library's decode default). */
    public String decode(List<Integer> ids) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        for (int id : ids) {
            Added a = addedById.get(id);
            String token = a != null ? a.content : (id >= 0 && id < idToToken.length ? idToToken[id] : null);
            if (token == null || (a != null && a.special)) {
                continue;
            }
            byte[] b = tokenBytes(token);
            bytes.write(b, 0, b.length);
        }
        return Utf8.decodeLossy(bytes.toByteArray(), bytes.size());
    }

    public String decode(int[] ids) {
        List<Integer> list = new ArrayList<>();
        for (int id : ids) {
            list.add(id);
        }
        return decode(list);
    }

    /** ByteLevel decoding of one token: its characters' bytes, or its own UTF-8 if any is not a byte character. */
    private static byte[] tokenBytes(String token) {
        byte[] out = new byte[token.length()];
        for (int i = 0; i < token.length(); i++) {
            Integer b = CHAR_BYTE.get(token.charAt(i));
            if (b == null) {
                return token.getBytes(StandardCharsets.UTF_8);
            }
            out[i] = (byte) (int) b;
        }
        return out;
    }

    private static String pair(String a, String b) {
        return a + '\u0000' + b;
    }
}
