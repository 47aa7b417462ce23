"""Tokenizers for the ONNX text towers, with no torch: token ids as int64 numpy arrays.

`ClipBpe` is the byte-level BPE of CLIP (the one open_clip's SimpleTokenizer runs with its
default 'lower' cleaning and no reduction), written again over numpy because open_clip's
tokenizer module imports torch at its top. It reads the merges file that open_clip ships; the
export copies that file into the index folder so that a query needs neither open_clip nor torch.

`WordPiece` wraps the `tokenizers` library over the tokenizer.json of the MiniLM package, set up
as sentence-transformers calls it (truncation at max_seq_length, padding to the longest text).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from retriever.errors import MissingDependencyError

CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2  # merges open_clip keeps from the file (the vocab is 49408 ids)
SOT, EOT = "<start_of_text>", "<end_of_text>"


def open_clip_vocab_path() -> Path:
    """The merges file inside the installed open_clip package, found without importing it
    (open_clip/__init__.py imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the CLIP tokenizer's vocabulary ships with open_clip: pip install open_clip_torch"
        )
    return Path(list(spec.submodule_search_locations)[0]) / CLIP_VOCAB_FILE


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """Each byte -> a printable character: printable Latin-1 bytes stand for themselves, the
    others are moved to 256 and above, in byte order (the GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipBpe:
    """texts -> (n, context_length) int64: <sot> BPE ids <eot>, zero-padded; a text too long is
    cut to the context length with <eot> as its last id. trim: only as many columns as the
    longest text needs (for a causal text tower exported with a dynamic length axis)."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77, trim: bool = False):
        import regex

        lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
        symbols = list(_byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]
        self.context_length = context_length
        self.trim = trim  # drop the padding columns after the batch's longest text
        self._bytes = _byte_symbols()
        self._cache: dict[str, list[int]] = {}
        self._pattern = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
        )

    def _word_ids(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if word in (SOT, EOT):
            out = [self.ids[word]]
        else:
            parts = list(word[:-1]) + [word[-1] + "</w>"]
            while len(parts) > 1:
                # Merge every occurrence of the best-ranked adjacent pair, left to right.
                best = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, float("inf")))
                if best not in self.ranks:
                    break
                merged: list[str] = []
                i = 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            out = [self.ids[p] for p in parts]
        self._cache[word] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self._pattern.findall(_clean(text)):
            ids.extend(self._word_ids("".join(self._bytes[b] for b in word.encode("utf-8"))))
        return ids

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        if self.trim and len(texts):
            out = np.ascontiguousarray(out[:, : int((out != 0).sum(axis=1).max())])
        return {"input_ids": out}


class WordPiece:
    """texts -> input_ids and attention_mask (n, longest) int64, as sentence-transformers makes them."""

    def __init__(self, tokenizer_json: str | Path, max_length: int):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingDependencyError(
                "the ONNX MiniLM path needs the tokenizers package: pip install tokenizers"
            ) from exc
        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.enable_truncation(max_length=max_length)
        pad_id = self._tok.token_to_id("[PAD]") or 0
        self._tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")  # no length: pad to the longest
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }
