"""An index on disk: a folder under the home holding the catalog and the FAISS file.

    HOME/NAME/catalog.db      SQLite catalog (files, metadata, settings, durable vectors)
    HOME/NAME/vectors.faiss   FAISS index derived from the catalog's vectors (+ .json sidecar)
    HOME/NAME/write.lock      held (flock) by the one process that writes
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .catalog import Catalog, utcnow
from .encoders.base import ModelSpec
from .errors import CatalogError, IndexLockedError, IndexNotFoundError, ModelMismatchError, RetrieverError

DEFAULT_INDEX = "default"
HOME_ENV = "RETRIEVER_HOME"
CATALOG_FILE = "catalog.db"
VECTORS_FILE = "vectors.faiss"
LOCK_FILE = "write.lock"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """--home, else $RETRIEVER_HOME, else ./indexes."""
    chosen = home or os.environ.get(HOME_ENV) or "indexes"
    return Path(chosen).expanduser().resolve()


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise RetrieverError(f"invalid index name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


class Index:
    """An opened index. Create with `Index.create`, open with `Index.open`."""

    def __init__(self, folder: Path, catalog: Catalog):
        self.folder = folder
        self.name = folder.name
        self.catalog = catalog
        self._lock_fd: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(cls, home: Path, name: str) -> "Index":
        folder = Path(home) / check_name(name)
        if not (folder / CATALOG_FILE).is_file():
            where = f" in {home}" if name == DEFAULT_INDEX else f" {name!r} in {home}"
            raise IndexNotFoundError(f"no index{where}: run `retriever index PATH` first")
        catalog = Catalog(folder / CATALOG_FILE)
        if catalog.get_setting("model") is None:
            catalog.close()
            raise CatalogError(f"{folder} holds a catalog without a model: not a retriever index (delete it?)")
        return cls(folder, catalog)

    @classmethod
    def exists(cls, home: Path, name: str) -> bool:
        return (Path(home) / check_name(name) / CATALOG_FILE).is_file()

    @classmethod
    def create(cls, home: Path, name: str, spec: ModelSpec, model_id: str, dim: int) -> "Index":
        folder = Path(home) / check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / CATALOG_FILE
        if not final.exists():
            # Built under a temporary name and renamed: a kill during creation never leaves a
            # catalog without its model.
            tmp = folder / f".{CATALOG_FILE}.{os.getpid()}.tmp"
            catalog = Catalog(tmp, create=True)
            catalog.set_settings(
                {
                    "model_id": model_id,
                    "model": {"name": spec.name, "pretrained": spec.pretrained},
                    "dim": dim,
                    "created_at": utcnow(),
                    "generation": 0,
                }
            )
            catalog.close()  # the last connection's close folds the WAL into the file
            os.replace(tmp, final)
        return cls(folder, Catalog(final))

    def close(self) -> None:
        self.release_lock()
        self.catalog.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- identity -------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.catalog.get_setting("model_id")

    @property
    def dim(self) -> int:
        return int(self.catalog.get_setting("dim"))

    def model_spec(self, device: str = "auto", batch_size: int | None = None) -> ModelSpec:
        model = self.catalog.get_setting("model")
        return ModelSpec(name=model["name"], pretrained=model["pretrained"], device=device, batch_size=batch_size)

    def check_model_request(self, name: str | None, pretrained: str | None) -> None:
        """A --model/--pretrained given for an existing index must name the index's own model."""
        if name is None and pretrained is None:
            return
        stored = self.catalog.get_setting("model")
        same_name = name is None or _same_model_name(name, stored["name"])
        same_weights = pretrained is None or _same_pretrained(pretrained, stored["pretrained"])
        if not (same_name and same_weights):
            asked = " ".join(x for x in (name or stored["name"], pretrained or "") if x)
            have = " ".join(x for x in (stored["name"], stored["pretrained"] or "") if x)
            raise ModelMismatchError(
                f"index {self.name!r} was built with {have}, not {asked}: to re-embed with {asked}, "
                f"use another --index NAME (or delete {self.folder})"
            )

    def load_encoder(self, device: str = "auto", batch_size: int | None = None):
        """The index's own encoder; refuses weights that no longer give the recorded model id."""
        from .encoders import create_encoder

        encoder = create_encoder(self.model_spec(device, batch_size))
        if encoder.model_id != self.model_id:
            raise ModelMismatchError(
                f"index {self.name!r} was built with {self.model_id}, but its weights now load as "
                f"{encoder.model_id} (was the weights file replaced?)"
            )
        return encoder

    # -- writer lock ----------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """One writer per index. flock is released by the kernel when a holder dies, so a lock left
        by a killed process never blocks the next run."""
        import fcntl

        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f" by pid {holder.get('pid')} since {holder.get('since')}" if holder else ""
            raise IndexLockedError(f"index {self.name!r} is being written{who}; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": utcnow()}).encode())
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- vectors --------------------------------------------------------------------------------

    @property
    def vectors_path(self) -> Path:
        return self.folder / VECTORS_FILE

    def vector_index(self):
        """The FAISS index for the catalog's current generation: the saved file when it is current,
        else rebuilt from the stored vectors (and saved, when this process holds the writer lock)."""
        from .vectors import VectorIndex

        generation = self.catalog.generation()
        try:
            vi, info = VectorIndex.load(self.vectors_path)
            if info.generation == generation and info.dim == self.dim:
                return vi
        except (FileNotFoundError, ValueError):
            pass
        vi = VectorIndex.build(self.dim, self.catalog.iter_vectors(self.dim))
        if self._lock_fd is not None:
            vi.save(self.vectors_path, generation)
        return vi

    def remove_images(self, ids: list[int]) -> None:
        """Drop images (rows and vectors) and bring the FAISS file up to date. Needs the lock."""
        if not ids:
            return
        vectors = self.vector_index()  # current, before the catalog changes
        self.catalog.remove(ids)
        vectors.remove(ids)
        vectors.save(self.vectors_path, self.catalog.generation())

    def status(self) -> dict[str, Any]:
        from .vectors import read_info

        counts = self.catalog.counts()
        info = read_info(self.vectors_path)
        current = info is not None and info.generation == self.catalog.generation()
        model = self.catalog.get_setting("model")
        return {
            "home": str(self.folder.parent),
            "index": self.name,
            "folder": str(self.folder),
            "model": model["name"],
            "pretrained": model["pretrained"],
            "model_id": self.model_id,
            "dim": self.dim,
            "images": counts["images"],
            "vectors": info.count if current else counts["stored_vectors"],
            "vector_index": info.kind if info else None,
            "vector_index_current": current,
            "failed": counts["failed"],
            "created_at": self.catalog.get_setting("created_at"),
            "last_run": self.catalog.last_run(),
        }


def _same_model_name(asked: str, stored: str) -> bool:
    if asked == stored:
        return True
    if asked.endswith(".json") or stored.endswith(".json"):
        return Path(asked).stem == Path(stored).stem
    return False


def _same_pretrained(asked: str, stored: str | None) -> bool:
    if stored is None:
        return False
    if asked == stored:
        return True
    return Path(asked).expanduser().resolve() == Path(stored).expanduser().resolve()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def open_for_writing(
    home: Path,
    name: str,
    *,
    model: str | None,
    pretrained: str | None,
    device: str = "auto",
    batch_size: int | None = None,
):
    """-> (Index holding the writer lock, its encoder, a note for the user or None).

    An existing index keeps its model (asking for another is a ModelMismatchError), and its
    encoder comes back as a callable that loads it, so that a run with nothing to read never
    loads a model. A new index gets the model asked for, or the default (see
    encoders.default_model_spec); its folder is created only once the encoder has loaded, and the
    lock is taken before the (slow) load so a second writer fails at once."""
    from .encoders import create_encoder, default_model_spec, is_config_path

    folder = Path(home) / check_name(name)
    if Index.exists(home, name):
        index = Index.open(home, name)
        try:
            index.check_model_request(model, pretrained)
            index.acquire_lock()
            return index, lambda: index.load_encoder(device, batch_size), None
        except BaseException:
            index.close()
            raise
    created_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    probe = Index(folder, catalog=None)  # type: ignore[arg-type]  # lock only, no catalog yet
    try:
        probe.acquire_lock()
        note = None
        if model is None:
            if pretrained is not None:
                raise RetrieverError("--pretrained needs --model ARCH (see `retriever models`)")
            spec, note = default_model_spec(device, batch_size)
        else:
            name_for_spec = model
            if is_config_path(model):
                name_for_spec = str(Path(model).expanduser().resolve())
            weights = pretrained
            if pretrained and Path(pretrained).expanduser().is_file():
                weights = str(Path(pretrained).expanduser().resolve())
            spec = ModelSpec(name=name_for_spec, pretrained=weights, device=device, batch_size=batch_size)
        encoder = create_encoder(spec)
        index = Index.create(home, name, spec, encoder.model_id, encoder.dim)
    except BaseException:
        probe.release_lock()
        if created_folder:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise
    index._lock_fd, probe._lock_fd = probe._lock_fd, None
    return index, encoder, note
