"""retriever: local-first cross-modal search for photo collections."""

__version__ = "0.1.0"
