package org.cosmoe.edge;

/** What the expert cache needs from storage: each expert's resident cost, and loading it. */
public interface ExpertSource {
    long cost(ExpertKey key);

    ProgramRunner load(ExpertKey key);
}
