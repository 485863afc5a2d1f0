package org.cosmoe.edge;

import java.io.File;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Experts on flash (experts.py ExpertStore): where each (layer, expert) program is, its cost
 * (resident_bytes: program plus planned activations), and loading one on demand with its size
 * checked always and its sha256 on its first load.
 */
public final class ExpertStore implements ExpertSource {
    private final Manifest manifest;
    private final boolean verifySha;
    private final ProgramLoader loader;
    private final Map<ExpertKey, FileEntry> entries = new LinkedHashMap<>();
    private final Set<ExpertKey> verified = Collections.synchronizedSet(new HashSet<ExpertKey>());
    private volatile int loads;
    private volatile long loadNs;

    public ExpertStore(Manifest manifest, List<FileEntry> experts, boolean verifySha, ProgramLoader loader) {
        this.manifest = manifest;
        this.verifySha = verifySha;
        this.loader = loader;
        for (FileEntry e : experts) {
            entries.put(new ExpertKey(e.intField("layer"), e.intField("expert")), e);
        }
    }

    public Set<ExpertKey> keys() {
        return Collections.unmodifiableSet(entries.keySet());
    }

    @Override
    public long cost(ExpertKey key) {
        return entry(key).residentBytes();
    }

    public long totalCost() {
        long total = 0;
        for (FileEntry e : entries.values()) {
            total += e.residentBytes();
        }
        return total;
    }

    public long maxCost() {
        long max = 0;
        for (FileEntry e : entries.values()) {
            max = Math.max(max, e.residentBytes());
        }
        return max;
    }

    @Override
    public ProgramRunner load(ExpertKey key) {
        FileEntry e = entry(key);
        long t = System.nanoTime();
        File path = manifest.checkFile(e, verifySha && !verified.contains(key));
        verified.add(key);
        ProgramRunner program = loader.open(path, Collections.singletonList("forward"));
        synchronized (this) {
            loads++;
            loadNs += System.nanoTime() - t;
        }
        return program;
    }

    public int loads() {
        return loads;
    }

    public long loadNs() {
        return loadNs;
    }

    private FileEntry entry(ExpertKey key) {
        FileEntry e = entries.get(key);
        if (e == null) {
            throw new ArtifactException("the manifest lists no expert " + key.expert + " in layer " + key.layer);
        }
        return e;
    }
}
