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
from typing import TYPE_CHECKING, Any, Callable

from retriever.durable import PRIVATE_FILE, private_folder
from retriever.encoders.base import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from retriever.store.catalog import Catalog
from retriever.errors import CatalogError, IndexLockedError, IndexNotFoundError, ModelMismatchError, RetrieverError
from retriever.index_vectors import (  # noqa: F401  (the settings: re-exported)
    EXACT_MAX_SETTING,
    GROWTH_BEFORE_RETRAINING,
    INDEX_KIND_SETTING,
    ON_DISK_SETTING,
    TARGET_RECALL_SETTING,
    VECTORS_FILE,
    IndexVectors,
)
from retriever.locations import HOME_ENV, resolve_home  # noqa: F401  (stdlib only: shared with the CLI's clients)

DEFAULT_INDEX = "default"
CATALOG_FILE = "catalog.db"
LOCK_FILE = "write.lock"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise RetrieverError(f"invalid index name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


class Index(IndexVectors):
    """An opened index. Create with `Index.create`, open with `Index.open`. Its vector index:
    retriever.index_vectors.IndexVectors (vector_index, optimize, ...)."""

    def __init__(self, folder: Path, catalog: "Catalog"):
        self.folder = folder
        self.name = folder.name
        self.catalog = catalog
        self._lock_fd: int | None = None
        self.one_query = False  # opened to answer a search and exit: its FAISS file is memory-mapped

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(cls, home: Path, name: str, read_only: bool = False) -> "Index":
        """read_only: for a process that only searches and exits (a CLI search): the catalog is
        read through sqlite3 (store.reader.CatalogReader), without importing SQLAlchemy (an
        index whose catalog needs migrating opens as usual), and the FAISS file is memory-mapped,
        not read (retriever.index_log.read_view)."""
        folder = Path(home) / check_name(name)
        if not (folder / CATALOG_FILE).is_file():
            where = f" in {home}" if name == DEFAULT_INDEX else f" {name!r} in {home}"
            raise IndexNotFoundError(f"no index{where}: run `retriever index PATH` first")
        catalog = _open_catalog(folder / CATALOG_FILE, read_only)
        if catalog.get_setting("model") is None:
            catalog.close()
            raise CatalogError(f"{folder} holds a catalog without a model: not a retriever index (delete it?)")
        index = cls(folder, catalog)
        index.one_query = read_only
        return index

    @classmethod
    def exists(cls, home: Path, name: str) -> bool:
        return (Path(home) / check_name(name) / CATALOG_FILE).is_file()

    @classmethod
    def create(cls, home: Path, name: str, spec: ModelSpec, model_id: str, dim: int,
               precision: str = "fp32") -> "Index":
        folder = private_folder(Path(home) / check_name(name))
        final = folder / CATALOG_FILE
        if not final.exists():
            # Built under a temporary name and renamed: a kill during creation never leaves a
            # catalog without its model.
            tmp = folder / f".{CATALOG_FILE}.{os.getpid()}.tmp"
            from retriever.store.catalog import Catalog, utcnow

            catalog = Catalog(tmp, create=True)
            os.chmod(tmp, PRIVATE_FILE)  # its -wal and -shm files take the same mode
            catalog.set_settings(
                {
                    "model_id": model_id,
                    "model": {"name": spec.name, "pretrained": spec.pretrained},
                    "dim": dim,
                    "precision": precision,
                    "created_at": utcnow(),
                    "generation": 0,
                }
            )
            catalog.close()  # the last connection's close folds the WAL into the file
            os.replace(tmp, final)
        from retriever.store.catalog import Catalog

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

    @property
    def precision(self) -> str:
        """The image tower's precision: "fp32", or "int8" (retriever.onnx.int8)."""
        return self.catalog.get_setting("precision") or "fp32"

    def check_precision_request(self, precision: str | None) -> None:
        if precision is not None and precision != self.precision:
            raise ModelMismatchError(
                f"index {self.name!r} was built with --precision {self.precision}, not {precision}: use another "
                f"--index NAME for {precision} vectors")

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
        from retriever.encoders import create_encoder

        encoder = create_encoder(self.model_spec(device, batch_size))
        if encoder.model_id != self.model_id:
            raise ModelMismatchError(
                f"index {self.name!r} was built with {self.model_id}, but its weights now load as "
                f"{encoder.model_id} (was the weights file replaced?)"
            )
        return encoder

    def indexing_encoder(self, device: str = "auto", batch_size: int | None = None, backend: str = "auto"):
        """-> (encoder for an indexing run, why that backend in words): the ONNX Runtime image tower
        on the CPU when the export measured it faster (or --backend onnx), else the PyTorch model.
        ONNX Runtime indexing imports no torch and no open_clip (seconds at start)."""
        from retriever.onnx import indexing_encoder_for

        onnx, why = indexing_encoder_for(self, backend, device, batch_size)
        return (onnx if onnx is not None else self.load_encoder(device, batch_size)), why

    # -- writer lock ----------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        """One writer per index. flock is released by the kernel when a holder dies, so a lock left
        by a killed process never blocks the next run."""
        import fcntl

        if getattr(self.catalog, "read_only", False):
            raise RetrieverError(f"index {self.name!r} was opened read-only (Index.open(read_only=True)): no writing")

        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f" by pid {holder.get('pid')} since {holder.get('since')}" if holder else ""
            raise IndexLockedError(f"index {self.name!r} is being written{who}; wait for it to finish") from None
        os.ftruncate(fd, 0)
        from retriever.store.catalog import utcnow

        os.write(fd, json.dumps({"pid": os.getpid(), "since": utcnow()}).encode())
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- ONNX export (retriever.onnx) ------------------------------------------------------------

    def export_onnx(self, encoder=None, images=None, cache_dir=None):
        """The index's ONNX export from the shared model cache (cache_dir; None: the user's), made
        there when the cache has none: the encoder (None: loaded on the CPU) exported, checked
        against PyTorch and timed; the outcome recorded (setting "onnx"). A refused export leaves
        search on PyTorch. Needs the writer lock. Raises MissingDependencyError without onnx/onnxruntime.
        -> onnx.ExportReport."""
        from retriever.onnx import export_index

        if self._lock_fd is None:
            raise RetrieverError("export_onnx needs the writer lock (Index.acquire_lock)")
        if encoder is None:  # loaded only when the model cache has no export of the model
            return export_index(self, lambda: self.load_encoder("cpu"), images=images, cache_dir=cache_dir)
        return export_index(self, encoder, images=images, cache_dir=cache_dir)

    def _onnx_status(self) -> dict[str, Any] | None:
        from retriever.onnx import ONNX_SETTING, valid_record

        record = self.catalog.get_setting(ONNX_SETTING)
        if not record:
            return None
        return {"usable": valid_record(self) is not None, "ok": record.get("ok"), "reason": record.get("reason"),
                "pending": bool(record.get("pending")),
                "opset": record.get("opset"), "onnxruntime": record.get("onnxruntime"),
                "max_abs_diff": {name: t.get("max_abs_diff") for name, t in (record.get("towers") or {}).items()},
                "indexing": record.get("indexing"), "int8": record.get("int8")}

    def remove_images(self, ids: list[int]) -> None:
        """Drop images (rows and vectors) and bring the FAISS file up to date. Needs the lock."""
        if not ids:
            return
        writer = self.vector_writer()  # current, before the catalog changes
        self.catalog.remove(ids, on_commit=writer.on_commit)
        writer.apply(ids, (), None)
        writer.finish()

    def _tags_status(self) -> dict[str, Any] | None:
        """The zero-shot label set and how many images carry tags; None before `retriever tag`."""
        tag_set = self.catalog.tag_set()
        if not tag_set:
            return None
        return {"labels": len(tag_set.get("labels", [])), "threshold": tag_set.get("threshold"),
                **self.catalog.tag_coverage()}

    def status(self) -> dict[str, Any]:
        from retriever.ondisk import ondisk_status
        from retriever.vectors import read_info

        from retriever.index_log import log_status

        counts = self.catalog.counts()
        info = read_info(self.vectors_path)
        log = log_status(self, info)
        generation = self.catalog.generation()
        current = info is not None and (info.generation == generation or (log or {}).get("generation") == generation)
        model = self.catalog.get_setting("model")
        on_disk = ondisk_status(self.vectors_path, info)
        return {
            "home": str(self.folder.parent),
            "index": self.name,
            "folder": str(self.folder),
            "model": model["name"],
            "pretrained": model["pretrained"],
            "model_id": self.model_id,
            "dim": self.dim,
            "precision": self.precision,
            "images": counts["images"],
            "vectors": counts["stored_vectors"],
            "vector_index": info.kind if info else None,
            "vector_index_current": current,
            "index_type": (on_disk["shown_kind"] if on_disk else info.index_type) if info else None,
            "index_params": (on_disk["shown_params"] if on_disk else _shown_params(info.params)) if info else None,
            "index_recall_at_10": info.recall_at_10 if info else None,
            "on_disk": on_disk["files"] if on_disk else None,
            "vector_log": log,
            "failed": counts["failed"],
            "tags": self._tags_status(),
            "text": _text_status(self.catalog),
            "regions": _region_status(self),
            "concepts": _concept_names(self.catalog),
            "onnx": self._onnx_status(),
            "created_at": self.catalog.get_setting("created_at"),
            "last_run": self.catalog.last_run(),
            "readable_by_others": self.readable_by_others(),
        }

    def readable_by_others(self) -> list[str]:
        """The index's folder and files that users other than the owner may read: an index holds
        private data (paths, places, captions, text in photos) and is created 0700 / 0600."""
        from retriever.durable import others_can_read

        paths = [self.folder, *(p for p in self.folder.rglob("*") if not p.is_symlink())]
        return [str(p) for p in paths if others_can_read(p)]


def _shown_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "factory"}


def _open_catalog(path: Path, read_only: bool):
    if read_only:
        from retriever.store.reader import CatalogReader, SchemaMismatch

        try:
            return CatalogReader(path)
        except SchemaMismatch:
            pass  # an older catalog: the full one migrates it
    from retriever.store.catalog import Catalog

    return Catalog(path)


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


def _cached_export(spec, backend: str, batch_size: int | None, cache_dir, device: str):
    """(entry, ONNX encoder, why) from the model cache for a new index of `spec`, or None."""
    from retriever.encoders import model_id_of
    from retriever.onnx import cached_indexing_encoder

    model_id = model_id_of(spec)
    return None if model_id is None else cached_indexing_encoder(model_id, backend, batch_size, cache_dir, device)


def _check_new_precision(precision: str, backend: str, device: str, onnx_export: bool) -> str:
    """The precision asked for (an index's own, for an existing one), where it can run."""
    from retriever.encoders.base import surely_cpu
    from retriever.onnx.int8 import PRECISIONS, PrecisionError

    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "int8" and (backend == "pytorch" or not onnx_export or not surely_cpu(device)):
        raise PrecisionError("--precision int8 runs on ONNX Runtime on the CPU: it needs the ONNX export "
                             "(not --no-onnx), not --backend pytorch, and --device cpu on a machine with a GPU")
    return precision


def _prepares_in_child(backend: str, device: str, prepare_in_child: bool | None) -> bool:
    import sys

    from retriever.encoders.base import surely_cpu

    if backend == "pytorch" or not surely_cpu(device):
        return False
    return ("torch" not in sys.modules) if prepare_in_child is None else prepare_in_child


def _start_preparation(spec, cache_dir):
    """A child preparing `spec`'s export once it has loaded the model, or None (the model is then
    loaded here, as without a child, and its errors said here)."""
    from retriever.onnx.prepare import Preparation, PreparationFailed

    try:
        preparation = Preparation(spec, cache_dir)
    except OSError:
        return None
    try:
        if preparation.model().get("preprocess"):
            return preparation
    except PreparationFailed:
        pass
    preparation.cancel()  # no torch-free preprocessing: the model is needed here anyway
    return None


def _with_onnx_export(index: Index, encoder, note: str | None, cache_dir=None) -> str | None:
    from retriever.errors import MissingDependencyError

    try:
        report = index.export_onnx(encoder, cache_dir=cache_dir)
    except MissingDependencyError:
        return note
    if report.ok:
        return note
    refused = f"ONNX export refused ({report.reason}): queries will use PyTorch"
    return f"{note}; {refused}" if note else refused


def _attach_background_export(index) -> None:
    """An export a background process finished since the last run is recorded now."""
    try:
        from retriever.onnx import attach_pending

        attach_pending(index)
    except (ImportError, OSError):
        pass


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
    onnx_export: bool = True,
    backend: str = "auto",
    on_backend: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
    prepare_in_child: bool | None = None,
    precision: str | None = None,
):
    """-> (Index holding the writer lock, its encoder, a note for the user or None).

    An existing index keeps its model (asking for another is a ModelMismatchError), and its
    encoder comes back as a callable that loads it, so that a run with nothing to read never
    loads a model. A new index gets the model asked for, or the default (see
    encoders.default_model_spec); its folder is created only once the encoder has loaded, and the
    lock is taken before the (slow) load so a second writer fails at once. A new index also gets
    its encoder exported to ONNX (onnx_export; skipped when onnxruntime is not installed); a
    refused export is said in the note and leaves queries on PyTorch.

    backend ("auto", "onnx", "pytorch"): what runs the image tower on the CPU (see
    Index.indexing_encoder); `on_backend` hears the choice, in words, when it is made.

    A model the cache does not hold yet is exported by a child process (retriever.onnx.prepare)
    while photos are read; the encoder is then a PendingEncoder, whose `finish` (or `cancel`)
    the caller calls after the run. prepare_in_child: None = when torch is not imported in this
    process yet (where it is, exporting here costs no import and no second copy of the model)."""
    from retriever.encoders import create_encoder, default_model_spec, is_config_path

    folder = Path(home) / check_name(name)
    if Index.exists(home, name):
        index = Index.open(home, name)
        try:
            index.check_model_request(model, pretrained)
            index.check_precision_request(precision)
            if index.precision == "int8":
                _check_new_precision("int8", backend, device, onnx_export=True)
            index.acquire_lock()
            _attach_background_export(index)

            def load():
                encoder, why = index.indexing_encoder(device, batch_size, backend)
                if on_backend is not None:
                    on_backend(why)
                return encoder

            return index, load, None
        except BaseException:
            index.close()
            raise
    precision = _check_new_precision(precision or "fp32", backend, device, onnx_export)
    created_folder = not folder.exists()
    private_folder(folder)
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
        # The model's export in the model cache, measured faster here: the index needs no torch.
        cached = _cached_export(spec, backend, batch_size, cache_dir, device) if onnx_export else None
        preparation = None
        if cached is None and onnx_export and _prepares_in_child(backend, device, prepare_in_child):
            preparation = _start_preparation(spec, cache_dir)
        if cached is not None:
            entry, encoder, why = cached
            index = Index.create(home, name, spec, entry.record["model_id"], int(entry.record["dim"]), precision)
        elif preparation is not None:
            model_info = preparation.model()
            index = Index.create(home, name, spec, model_info["model_id"], int(model_info["dim"]), precision)
        else:
            encoder = create_encoder(spec)
            index = Index.create(home, name, spec, encoder.model_id, encoder.dim, precision)
    except BaseException:
        if preparation is not None:
            preparation.cancel()
        probe.release_lock()
        if created_folder:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise
    index._lock_fd, probe._lock_fd = probe._lock_fd, None
    if preparation is not None:
        from retriever.onnx.prepare import PendingEncoder

        encoder = PendingEncoder(index, preparation, backend, device, batch_size, on_backend, cache_dir)
        return index, encoder, note
    if cached is not None:
        from retriever.onnx import attach

        try:
            attach(index, entry)
            if precision == "int8":  # attached: the int8 entry derived from the fp32 one
                from retriever.onnx import indexing_encoder_for

                encoder, why = indexing_encoder_for(index, backend, device, batch_size)
        except BaseException:
            index.close()
            raise
        if on_backend is not None:
            on_backend(why)
        return index, encoder, note
    if onnx_export:
        try:
            note = _with_onnx_export(index, encoder, note, cache_dir)
        except BaseException:  # interrupted: the index stays, on PyTorch, until `optimize` exports it
            index.close()
            raise
    if backend != "pytorch":
        from retriever.onnx import indexing_encoder_for

        try:
            onnx, why = indexing_encoder_for(index, backend, device, batch_size)
        except BaseException:
            index.close()
            raise
        if onnx is not None:
            encoder = onnx  # the PyTorch model is dropped: ONNX Runtime indexes
        if on_backend is not None:
            on_backend(why)
    return index, encoder, note


def _region_status(index) -> dict[str, Any] | None:
    from retriever.regions import region_status

    return region_status(index)


def _concept_names(catalog) -> list[str]:
    from retriever.store.concepts import concept_names

    return concept_names(catalog)


def _text_status(catalog) -> dict[str, int]:
    """Photos whose text was read (retriever ocr), and of them those with text."""
    from retriever.store.ocr import read_counts

    return read_counts(catalog)
