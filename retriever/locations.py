"""Where indexes live: --home, else $RETRIEVER_HOME, else ./indexes; an index is HOME/NAME.

The standard library only (os, pathlib): the daemon's client (retriever.daemon.entry) and the serve
client find an index folder with it without importing the catalog (SQLAlchemy, numpy)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "RETRIEVER_HOME"
DEFAULT_HOME = "indexes"  # relative to the working directory


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """--home, else $RETRIEVER_HOME, else ./indexes; absolute."""
    chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def index_folder(home: str | os.PathLike | None, index_name: str) -> Path:
    """The folder of index `index_name` (not checked: it may not exist, or the name be invalid)."""
    return resolve_home(home) / index_name
