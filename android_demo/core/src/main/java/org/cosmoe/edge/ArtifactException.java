package org.cosmoe.edge;

/**
 * A problem with the artifact or request a user gave us: one line for the screen. {@code kind}
 * names the class of error with the same strings as Python's ArtifactError.kind (conformance
 * tests compare them).
 */
public final class ArtifactException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final String kind;

    public ArtifactException(String message) {
        this(message, "artifact");
    }

    public ArtifactException(String message, String kind) {
        super(message);
        this.kind = kind;
    }

    public String kind() {
        return kind;
    }
}
