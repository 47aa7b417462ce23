"""The built-in vocabulary of `retriever tag`: a few hundred everyday photo concepts shipped as
package data (retriever/data/vocabulary.txt). It is the label set when no labels are given, and
always the background each label is judged against (retriever/tag_rule.py).

Its text vectors are computed once per model and prompt templates and cached in the model cache
(retriever/locations.py cache_root: --cache-dir, $RETRIEVER_CACHE_DIR, or the user's cache
folder), under tag-vocabulary/, keyed by the model id, the templates and the list itself."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The shipped concepts, normalised, in file order ('#' lines and blanks skipped)."""
    text = resources.files("retriever").joinpath("data/vocabulary.txt").read_text(encoding="utf-8")
    concepts = [" ".join(line.split()).lower() for line in text.splitlines()]
    return tuple(dict.fromkeys(c for c in concepts if c and not c.startswith("#")))


def cache_key(model_id: str, templates: Sequence[str], concepts: Sequence[str]) -> str:
    blob = json.dumps({"model": model_id, "templates": list(templates), "concepts": list(concepts)})
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def vocabulary_embeddings(model_id: str, templates: Sequence[str],
                          embed: Callable[[Sequence[str]], np.ndarray],
                          cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """(len(vocabulary()), dim) float32 unit rows, from the cache or computed by `embed(concepts)`
    (then cached; a cache that cannot be written is skipped)."""
    from retriever.locations import cache_root

    concepts = vocabulary()
    path = Path(cache_root(cache_dir)) / "tag-vocabulary" / f"{cache_key(model_id, templates, concepts)}.npy"
    try:
        cached = np.load(path)
        if cached.shape[0] == len(concepts):
            return cached.astype(np.float32, copy=False)
    except (OSError, ValueError):
        pass
    vectors = np.asarray(embed(concepts), dtype=np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
            np.save(tmp, vectors)
        os.replace(tmp.name, path)
    except OSError:
        pass
    return vectors
