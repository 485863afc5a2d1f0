package org.cosmoe.edge;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Per layer, the expert sets of consecutive tokens, for the switch rate (engine.py RoutingLog);
 * with trace on, every step's choices (the conformance tests compare them with Python's).
 */
public final class RoutingLog {
    /** One layer call: its first position and the experts chosen for each of its tokens. */
    public static final class Step {
        public final int pos0;
        public final int layer;
        public final int[][] experts;

        Step(int pos0, int layer, int[][] experts) {
            this.pos0 = pos0;
            this.layer = layer;
            this.experts = experts;
        }
    }

    private final Map<Integer, Set<Integer>> last = new HashMap<>();
    private final List<Step> trace = new ArrayList<>();
    private final boolean keepTrace;
    private long pairs;
    private long switched;

    public RoutingLog(boolean keepTrace) {
        this.keepTrace = keepTrace;
    }

    public void add(int layer, int pos0, int[][] experts) {
        for (int[] row : experts) {
            Set<Integer> s = new HashSet<>();
            for (int e : row) {
                if (e >= 0) {  // -1: chosen but not run (Selection)
                    s.add(e);
                }
            }
            Set<Integer> prev = last.get(layer);
            if (prev != null) {
                pairs += s.size();
                for (int e : s) {
                    if (!prev.contains(e)) {
                        switched++;
                    }
                }
            }
            last.put(layer, s);
        }
        if (keepTrace) {
            trace.add(new Step(pos0, layer, experts));
        }
    }

    public double switchRate() {
        return pairs == 0 ? 0.0 : (double) switched / pairs;
    }

    public List<Step> trace() {
        return Collections.unmodifiableList(trace);
    }
}
