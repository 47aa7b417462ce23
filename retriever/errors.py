"""Typed errors raised by the library. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class RetrieverError(Exception):
    """Base class: every error a user can cause or fix. Its message is one line, ready to print."""


class IndexNotFoundError(RetrieverError):
    """The named index does not exist under the home folder."""


class IndexLockedError(RetrieverError):
    """Another process is writing to the index."""


class ModelMismatchError(RetrieverError):
    """A command asked for a model other than the one the index was built with."""


class UnknownModelError(RetrieverError):
    """No encoder of that name (not the offline encoder, not an open_clip architecture)."""


class WeightsNotFoundError(RetrieverError):
    """The weights for a model are neither local nor downloadable."""


class ImageDecodeError(RetrieverError):
    """A file could not be read as an image (corrupt, truncated, too large, unsupported)."""


class CatalogError(RetrieverError):
    """The catalog is unreadable, from a newer version, or inconsistent."""


class MissingDependencyError(RetrieverError):
    """An optional package needed by this feature is not installed."""


class DeviceError(RetrieverError):
    """The GPU could not run the model, named for what it is: out of memory, a torch build for
    another CUDA (or none), no kernel for this GPU, a device that does not exist."""


class DeviceOutOfMemoryError(DeviceError):
    """The GPU ran out of memory even at the smallest batch."""
