"""The training corpus: found on the machine, split by document, tokenized into one id stream.

Default corpus: the Python 3 documentation sources that Debian's python3.X-doc package installs
(/usr/share/doc/python3.X/html/_sources, ~11 MB of English reStructuredText, PSF License 2.0).
`make setup` installs it; any other text file or folder can be given with --corpus.
"""

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from cosmoe_edge.errors import CorpusError

DEFAULT_GLOB = "/usr/share/doc/python3*/html/_sources"
TEXT_SUFFIXES = (".txt", ".rst", ".md")
VAL_PER_MILLE = 50  # 5% of documents held out, chosen by a hash of their name


def find_corpus() -> Path:
    # python3.11-venv's doc folder is a link to python3.11's: resolve, then take the newest version
    found = sorted({p.resolve() for p in Path("/").glob(DEFAULT_GLOB.lstrip("/"))},
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)])
    if not found:
        raise CorpusError("no corpus found: install Debian's python3.11-doc (`make setup` does) "
                          "or pass --corpus PATH (a text file or folder)")
    return found[-1]


def read_documents(path: Path) -> list[tuple[str, str]]:
    """(name, text) for a file, or for every text file under a folder, in a stable order."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
    else:
        raise CorpusError(f"corpus not found: {path}")
    docs = [(str(p.relative_to(path)) if p != path else p.name, p.read_text("utf-8", errors="replace"))
            for p in files]
    docs = [(n, t) for n, t in docs if t.strip()]
    if not docs:
        raise CorpusError(f"no text in {path} (looked for {', '.join(TEXT_SUFFIXES)} files)")
    return docs


def split_documents(docs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split. Several documents: by a hash of each name, so adding a
    document never moves another. One document: its last 5%, cut at a line break."""
    if len(docs) == 1:
        text = docs[0][1]
        cut = text.rfind("\n", 0, len(text) * (1000 - VAL_PER_MILLE) // 1000)
        cut = cut if cut > 0 else len(text) * (1000 - VAL_PER_MILLE) // 1000
        return [text[:cut]], [text[cut:]]
    train, val = [], []
    for name, text in docs:
        bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 1000
        (val if bucket < VAL_PER_MILLE else train).append(text)
    if not val or not train:  # tiny folders: keep at least one document on each side
        texts = [t for _, t in docs]
        return texts[:-1], texts[-1:]
    return train, val


def heldout_text(chars: int | None = None) -> str:
    """The corpus's validation documents joined by newlines (the first `chars` characters): the held-out
    text that export verification and the comparison scripts score, never trained on."""
    text = "\n".join(split_documents(read_documents(find_corpus()))[1])
    return text if chars is None else text[:chars]


def encode_stream(tok, texts: list[str], eos: int) -> torch.Tensor:
    """All documents as one int32 id stream, each followed by EOS."""
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.from_numpy(np.asarray(ids, dtype=np.int32))


def random_batch(stream: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    """batch random windows: inputs (B, T) and next-token targets (B, T), as int64."""
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=gen)
    rows = torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()]).long()
    return rows[:, :-1], rows[:, 1:]


def eval_windows(stream: torch.Tensor, seq_len: int, max_windows: int):
    """Non-overlapping windows from the start of the stream: the fixed validation set."""
    n = min(max_windows, (len(stream) - 1) // seq_len)
    if n < 1:
        raise CorpusError(f"validation text too short for one window of {seq_len} tokens")
    rows = stream[: n * seq_len + 1]
    x = rows[:-1].view(n, seq_len).long()
    y = rows[1:].view(n, seq_len).long()
    return x, y
