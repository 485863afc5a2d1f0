"""Byte-level BPE (HF tokenizers): any UTF-8 text round-trips, no unknown tokens."""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # no normalizer and no prefix space: decode(encode(s)) == s exactly
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


def eos_id(tok: Tokenizer, meta: dict | None = None) -> int | None:
    """The id that ends a generation: an imported model's own (meta["eos_id"]), else our tokenizer's EOS."""
    if meta and meta.get("eos_id") is not None:
        return int(meta["eos_id"])
    return tok.token_to_id(EOS)
