"""Text in photos: read with OCR models that ship inside the `rapidocr` wheel (retriever/ocr/reader.py),
stored per photo in the catalog (retriever/store/ocr.py), searched by word (the keyword index's
`text` column) and by substring (`--text`, the trigram index of each photo's squashed text).

Importing this package imports nothing else (a search's filters use `squash`); the run is in
retriever.ocr.run, the reader in retriever.ocr.reader.
"""

from __future__ import annotations

import unicodedata


def squash(text: str) -> str:
    """What the substring filter compares: letters and digits only, case-folded, accents dropped.
    "2023-0471" -> "20230471", "Paradiso!" -> "paradiso", "Café" -> "cafe"."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in folded if ch.isalnum())


def squash_lines(lines) -> str:
    """The squashed text of a photo: each line squashed, lines kept apart by a newline (a needle
    never matches across two lines)."""
    return "\n".join(s for s in (squash(line) for line in lines) if s)
