"""Shared by the scripts that write measured figures into docs/*.md: replace what stands between a
pair of HTML-comment markers, so the prose around the figures is never touched."""

import re
from pathlib import Path


def write_between_markers(doc: Path, body: str, name: str = "figures", heading: str = ""):
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else ""
    if start not in text:
        text += f"\n{heading}\n{start}\n{end}\n" if heading else f"\n{start}\n{end}\n"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    doc.write_text(text)
