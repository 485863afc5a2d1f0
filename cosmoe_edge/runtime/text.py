"""Streaming decoded text as tokens arrive (edge-run and the eager reference CLI)."""


class TextStream:
    """Writes decoded text to `out` as tokens arrive, holding back an incomplete multi-byte
    character (the byte-level BPE can split one across tokens)."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out, self.ids, self.shown = tokenizer, out, [], 0

    def __call__(self, token: int):
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if self.out is not None and not text.endswith("\ufffd"):
            self.out.write(text[self.shown:])
            self.out.flush()
            self.shown = len(text)
