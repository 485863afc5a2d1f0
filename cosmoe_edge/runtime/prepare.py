"""edge-prepare: a device-local prepared cache for the native engine, outside the (read-only) artifact.

XNNPACK packs each program's weights into its own layout when the program loads: for an expert, that is most of
a miss. Its packed-weights cache keeps the packed bytes in one file, keyed by the sha256 of the weights they came
from, and maps it on later loads. The packed layout depends on XNNPACK's build (the ExecuTorch version) and on the
CPU's features, so the cache is written once per device, kept under
$COSMOE_EDGE_CACHE (default $XDG_CACHE_HOME/cosmoe-edge or ~/.cache/cosmoe-edge)/<manifest sha256>/<device key>/,
beside prepared.json, which says what it was prepared for and the packed file's size, sha256 and identity.
A run uses it only if every one of those still holds: a stale (other ExecuTorch, other CPU, re-exported artifact)
cache is ignored and said so; a damaged one is refused in one line."""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.manifest import MANIFEST, sha256_file

PREPARED = "prepared.json"
PACKED = "xnnpack.bin"
FORMAT = 1


def cache_root() -> Path:
    if env := os.environ.get("COSMOE_EDGE_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cosmoe-edge"


def cpu_features() -> str:
    """The CPU's model and feature flags as /proc/cpuinfo states them (first processor)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    return json.dumps(fields, sort_keys=True)


def device_key(executorch_version: str) -> str:
    return f"et{executorch_version}-cpu{hashlib.sha256(cpu_features().encode()).hexdigest()[:12]}"


def folder(artifact: Path, executorch_version: str, root: Path | None = None) -> Path:
    manifest_sha = sha256_file(Path(artifact) / MANIFEST)
    return (root or cache_root()) / manifest_sha[:16] / device_key(executorch_version)


def identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def prepare(artifact: Path, root: Path | None = None, threads: int = 1) -> dict:
    """Load every program of the artifact through the native core with a fresh packed cache, have XNNPACK write
    it, and put it in place (a temporary folder, then a rename): returns prepared.json's content."""
    from cosmoe_edge.runtime.native import NativeEngine, core

    native = core()
    artifact = Path(artifact)
    final = folder(artifact, native.EXECUTORCH_VERSION, root)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t = time.perf_counter()
        engine = NativeEngine(artifact, threads=threads, packed_cache=tmp / PACKED)
        engine.preload()  # every expert: the budget is all of them
        native.save_packed_cache()
        engine.close()
        packed = tmp / PACKED
        if not packed.is_file() or packed.stat().st_size == 0:
            raise ArtifactError("XNNPACK wrote no packed-weights cache (this ExecuTorch build may not support it)",
                                "packed_cache")
        meta = {"format": FORMAT, "executorch_version": native.EXECUTORCH_VERSION, "cpu": cpu_features(),
                "manifest_sha256": sha256_file(artifact / MANIFEST), "artifact": str(artifact.resolve()),
                "packed": {"path": PACKED, "bytes": packed.stat().st_size, "sha256": sha256_file(packed)},
                "seconds": round(time.perf_counter() - t, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # the identity is the final file's: a rename keeps the inode and the modification time
        meta["packed"]["identity"] = identity(packed)
        (tmp / PREPARED).write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta | {"folder": str(final)}


def prepared_cache(artifact: Path, root: Path | None = None) -> Path | None:
    """The packed cache to run `artifact` with on this device, None when there is none that fits (see
    status()); ArtifactError when there is one and it is damaged."""
    return status(artifact, root)[0]


def status(artifact: Path, root: Path | None = None) -> tuple[Path | None, str]:
    """(the packed cache file or None, one line saying which and why)."""
    from cosmoe_edge.runtime.native import core

    native = core()
    where = folder(artifact, native.EXECUTORCH_VERSION, root)
    meta_path = where / PREPARED
    hint = f"run `edge-prepare {artifact}` once on this device"
    if not meta_path.is_file():
        return None, f"no prepared cache for this artifact on this device: each expert's weights are packed as it loads ({hint})"
    try:
        meta = json.loads(meta_path.read_text())
        packed = meta["packed"]
        stale = [what for what, ok in (("format", meta["format"] == FORMAT),
                                       ("ExecuTorch version", meta["executorch_version"] == native.EXECUTORCH_VERSION),
                                       ("CPU", meta["cpu"] == cpu_features()),
                                       ("artifact", meta["manifest_sha256"] == sha256_file(Path(artifact) / MANIFEST)))
                 if not ok]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise ArtifactError(f"{meta_path} is damaged; {hint} again", "packed_cache") from None
    if stale:
        return None, f"the prepared cache in {where} was made for another {', '.join(stale)}: not used ({hint} again)"
    path = where / packed["path"]
    if not path.is_file() or path.stat().st_size != packed["bytes"]:
        raise ArtifactError(f"the prepared cache {path} is missing or truncated; {hint} again", "packed_cache")
    if identity(path) != packed["identity"] and sha256_file(path) != packed["sha256"]:
        raise ArtifactError(f"the prepared cache {path} does not match its sha256: corrupt; {hint} again", "packed_cache")
    return path, f"prepared cache: {path}"
