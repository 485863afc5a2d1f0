package org.cosmoe.edge;

import java.util.ArrayList;
import java.util.List;

/**
 * run.py TextStream: decodes the tokens so far after each new one and passes on only the new
 * text, holding it back while it ends in an incomplete multi-byte character (U+FFFD).
 */
public final class TextStream implements Generator.TokenListener {
    /** Receives each new piece of text. */
    public interface Sink {
        void write(String text);
    }

    private final Tokenizer tokenizer;
    private final Sink sink;
    private final List<Integer> ids = new ArrayList<>();
    private int shown;

    public TextStream(Tokenizer tokenizer, Sink sink) {
        this.tokenizer = tokenizer;
        this.sink = sink;
    }

    @Override
    public void onToken(int token) {
        ids.add(token);
        String text = tokenizer.decode(ids);
        if (sink != null && !text.endsWith("\uFFFD")) {
            sink.write(text.substring(Math.min(shown, text.length())));
            shown = text.length();
        }
    }
}
