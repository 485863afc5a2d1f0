package org.cosmoe.edge;

/** (layer, expert): one routed expert's program. */
public final class ExpertKey implements Comparable<ExpertKey> {
    public final int layer;
    public final int expert;

    public ExpertKey(int layer, int expert) {
        this.layer = layer;
        this.expert = expert;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof ExpertKey && ((ExpertKey) o).layer == layer && ((ExpertKey) o).expert == expert;
    }

    @Override
    public int hashCode() {
        return layer * 1_000_003 + expert;
    }

    @Override
    public int compareTo(ExpertKey o) {
        return layer != o.layer ? Integer.compare(layer, o.layer) : Integer.compare(expert, o.expert);
    }

    @Override
    public String toString() {
        return "(" + layer + ", " + expert + ")";
    }
}
