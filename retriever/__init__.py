"""retriever: local-first cross-modal search for photo collections.

The public Python API; everything not listed in `__all__` is private::

    import retriever

    with retriever.open(home="~/indexes", index="default") as photos:    # read-only
        for hit in photos.search("a dog on the beach", k=5, after="2023"):
            print(hit.rank, hit.score, hit.path)
        photos.similar("~/Downloads/x.jpg", k=5)
        photos.status()

    with retriever.open(index="default", writable=True) as photos:      # takes the writer lock
        summary = photos.index(["~/Pictures"], progress=lambda p: print(p.done, p.total))

The names are loaded on first use, so `import retriever` (and the `retriever` command's start-up)
costs nothing more than this module."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the command's start-up)

__version__ = "0.1.0"

__all__ = [
    "open",
    "Collection",
    "NewIndex",
    "Hit",
    "Progress",
    "RunSummary",
    "RetrieverError",
    "IndexNotFoundError",
    "IndexLockedError",
    "ModelMismatchError",
    "ReadOnlyError",
    "__version__",
]

# name -> the module that defines it
_EXPORTS = {
    "open": "retriever.api",
    "Collection": "retriever.api",
    "NewIndex": "retriever.api",
    "ReadOnlyError": "retriever.api",
    "Hit": "retriever.search",
    "Progress": "retriever.progress",
    "RunSummary": "retriever.indexer",
    "RetrieverError": "retriever.errors",
    "IndexNotFoundError": "retriever.errors",
    "IndexLockedError": "retriever.errors",
    "ModelMismatchError": "retriever.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from retriever.api import Collection, NewIndex, ReadOnlyError, open
    from retriever.errors import IndexLockedError, IndexNotFoundError, ModelMismatchError, RetrieverError
    from retriever.indexer import RunSummary
    from retriever.progress import Progress
    from retriever.search import Hit


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retriever' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
