"""Where indexes live: --home, else $RETRIEVER_HOME, else ./indexes; an index is HOME/NAME. Where
the model cache lives: --cache-dir, else $RETRIEVER_CACHE_DIR, else the user's cache folder.

The standard library only (os, pathlib): the daemon's client (retriever.daemon.entry) and the serve
client find an index folder with it without importing the catalog (SQLAlchemy, numpy)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "RETRIEVER_HOME"
CACHE_ENV = "RETRIEVER_CACHE_DIR"
DEFAULT_HOME = "indexes"  # relative to the working directory


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """--home, else $RETRIEVER_HOME, else ./indexes; absolute."""
    chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def index_folder(home: str | os.PathLike | None, index_name: str) -> Path:
    """The folder of index `index_name` (not checked: it may not exist, or the name be invalid)."""
    return resolve_home(home) / index_name


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The model cache: --cache-dir, else $RETRIEVER_CACHE_DIR, else the user's cache folder."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_cache_dir("retriever"))
