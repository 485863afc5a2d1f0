"""artifact/manifest.json: the contract between the exporter and every runtime (Python, Android).

Every file the manifest names carries its size and sha256; paths are relative to the artifact.
Bump FORMAT_VERSION on any change a runtime must know about.
"""

import hashlib
import json
import os
import stat
from pathlib import Path

from cosmoe_edge.errors import ArtifactError, RequestError

FORMAT_VERSION = 2  # 2: ONNX experts in the weights form (expert_form, expert_graphs)
MANIFEST = "manifest.json"
BACKENDS = ("executorch", "onnx")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(root: Path, path: Path, **extra) -> dict:
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path),
            **extra}


def load_manifest(artifact: Path) -> dict:
    artifact = Path(artifact)
    if not artifact.exists():
        raise ArtifactError(f"artifact folder not found: {artifact}", "not_found")
    if not artifact.is_dir():
        raise ArtifactError(f"{artifact} is not a folder (expected an artifact written by edge-export)", "not_a_folder")
    path = artifact / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{artifact} has no {MANIFEST}: not an artifact written by edge-export", "no_manifest")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})", "bad_json") from None
    version = m.get("format_version") if isinstance(m, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # True == 1 in Python: not a version
        raise ArtifactError(f"{path} has format_version {version!r}; this runtime reads version {FORMAT_VERSION} "
                            "(re-export the model with this version of edge-export)", "bad_format_version")
    for key in ("model", "tokenizer", "embedding", "quant", "backends", "layer_max_tokens", "expert_max_tokens"):
        if key not in m:
            raise ArtifactError(f"{path} lacks '{key}'", "missing_key")
    return m


def backend_section(manifest: dict, backend: str) -> dict:
    have = sorted(manifest["backends"])
    if backend not in BACKENDS:
        raise RequestError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", "unknown_backend")
    if backend not in manifest["backends"]:
        raise ArtifactError(f"this artifact has no {backend} programs (it has: {', '.join(have) or 'none'})",
                            "missing_backend")
    return manifest["backends"][backend]


def check_file(artifact: Path, entry: dict, verify_sha: bool, st: os.stat_result | None = None) -> Path:
    """The entry's file, after checking its size (always) and sha256 (when asked). `st`: the file's stat
    if the caller has just taken it (this runs on every expert load: one system call, not two)."""
    path = Path(artifact) / entry["path"]
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            pass
    if st is None or not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"missing file {entry['path']} in {artifact}", "missing_file")
    size = st.st_size
    if size != entry["bytes"]:
        raise ArtifactError(f"{entry['path']} is {size} bytes, the manifest says {entry['bytes']}: "
                            "truncated or replaced file", "size_mismatch")
    if verify_sha and sha256_file(path) != entry["sha256"]:
        raise ArtifactError(f"{entry['path']} does not match its sha256 in the manifest: corrupt file", "sha_mismatch")
    return path


def expert_cost(entry: dict) -> int:
    """Bytes an expert is charged against the budget while resident at full speed: its measured footprint
    (resident_bytes, written by the exporter), else its file size. What "25%" of the experts is of."""
    return entry.get("resident_bytes", entry["bytes"])


def peer_rows_bytes(manifest: dict) -> int:
    """Bytes of the PEER layers' row files (0 without PEER layers)."""
    return sum(e["bytes"] for e in manifest.get("peer", {}).get("layers", {}).values())


def peer_files(manifest: dict) -> list[dict]:
    """The entries of every file of the PEER layers: rows, their page hashes, the scales."""
    peer = manifest.get("peer", {})
    return [f for e in peer.get("layers", {}).values() for f in (e, e["page_sha256"])] + \
        ([peer["scales"]] if "scales" in peer else [])


def lazy_bytes(manifest: dict, section: dict) -> int:
    """All that a backend's run loads lazily: its experts at full cost and the PEER layers' row files."""
    return sum(expert_cost(e) for e in section["experts"]) + peer_rows_bytes(manifest)


def expert_load_cost(entry: dict) -> int:
    """Bytes it is charged once loaded: less than at full speed for an ONNX expert in the weights form
    (mapped weights, before the runtime gives it a prepacked session: loaded_bytes), else the same."""
    return entry.get("loaded_bytes", expert_cost(entry))


def artifact_files(artifact: Path, manifest: dict) -> list[Path]:
    """Every file the manifest names that exists (what --cold drops from the page cache)."""
    files = [artifact / manifest[k]["path"] for k in ("tokenizer", "embedding", "routers", "compressed_experts")
             if k in manifest]
    files += [artifact / e["path"] for e in peer_files(manifest)]
    for section in manifest["backends"].values():
        files += [artifact / f["path"] for f in section["backbone"]["files"]]
        files += [artifact / e["path"] for e in section["experts"]]
    return [f for f in files if f.exists()]
