package org.cosmoe.edge;

/** Router logits and next tokens that vary with position and layer, for tests that need no Python vectors. */
final class SyntheticScript implements RecordedPrograms.Script {
    private final TestArtifact a;

    SyntheticScript(TestArtifact artifact) {
        this.a = artifact;
    }

    @Override
    public float[] routerLogits(int layer, int pos0, int tokens, float[] h) {
        float[] out = new float[tokens * a.numExperts];
        for (int t = 0; t < tokens; t++) {
            for (int e = 0; e < a.numExperts; e++) {
                out[t * a.numExperts + e] = -((pos0 + t + 2 * layer + 3 * e) % a.numExperts) - 0.1f * e;
            }
        }
        return out;
    }

    @Override
    public float[] headLogits(int call) {
        float[] logits = new float[a.vocab];
        logits[(call * 5 + 3) % a.vocab] = 1f;
        return logits;
    }
}
