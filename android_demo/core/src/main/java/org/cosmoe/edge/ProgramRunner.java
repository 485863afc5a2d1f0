package org.cosmoe.edge;

/**
 * One loaded program file (the backbone, or one expert): run a method on float32 tensors and get
 * float32 outputs copied out of the program's memory (its next call overwrites that memory).
 * {@link #close()} releases the program and the memory planned for it.
 */
public interface ProgramRunner extends AutoCloseable {
    FloatTensor[] run(String method, FloatTensor... inputs);

    @Override
    void close();
}
