package org.cosmoe.edge;

import java.util.ArrayList;
import java.util.List;

/**
 * generate.py generate(): prefill the prompt, then decode one token at a time, timed. Time to
 * first token covers the prefill and the first token's sampling.
 */
public final class Generator {
    /** Called with each new token as soon as it is sampled. */
    public interface TokenListener {
        void onToken(int token);
    }

    /** Polled before each decode step: true ends the generation early (the app's Stop button). */
    public interface StopSignal {
        boolean stopRequested();
    }

    public static final class Result {
        public final List<Integer> ids = new ArrayList<>();
        public long prefillNs;
        /** Decode steps only. */
        public final List<Long> tokenNs = new ArrayList<>();
        public boolean stopped;
    }

    private Generator() {
    }

    public static Result generate(Engine engine, int[] promptIds, int maxNewTokens, Sampler sampler, Integer eos,
                                  TokenListener onToken, StopSignal stop) {
        engine.reset();
        Result out = new Result();
        int room = engine.cfg.maxSeqLen - promptIds.length;
        maxNewTokens = Math.max(0, Math.min(maxNewTokens, room));
        if (maxNewTokens == 0) {
            return out;
        }
        long t = System.nanoTime();
        float[] logits = engine.forward(promptIds);
        while (true) {
            int token = sampler.sample(logits);
            long now = System.nanoTime();
            if (out.ids.isEmpty()) {
                out.prefillNs = now - t;
            } else {
                out.tokenNs.add(now - t);
            }
            out.ids.add(token);
            if (onToken != null) {
                onToken.onToken(token);
            }
            if ((eos != null && token == eos) || out.ids.size() >= maxNewTokens) {
                break;
            }
            if (stop != null && stop.stopRequested()) {
                out.stopped = true;
                break;
            }
            t = System.nanoTime();
            logits = engine.forward(new int[] {token});
        }
        return out;
    }
}
