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

from retriever.encoders.base import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from retriever.store.catalog import Catalog
from retriever.errors import CatalogError, IndexLockedError, IndexNotFoundError, ModelMismatchError, RetrieverError
from retriever.locations import HOME_ENV, resolve_home  # noqa: F401  (stdlib only: shared with the CLI's clients)

DEFAULT_INDEX = "default"
CATALOG_FILE = "catalog.db"
VECTORS_FILE = "vectors.faiss"
LOCK_FILE = "write.lock"
# Catalog settings for the kind of vector index (written by `retriever optimize`).
INDEX_KIND_SETTING = "vector_index_kind"  # auto | flat | ivf-sq8 | ivf-pq
TARGET_RECALL_SETTING = "target_recall"  # recall@10 an IVF index must reach against exact search
EXACT_MAX_SETTING = "exact_max_vectors"  # auto: exact up to this many vectors
ON_DISK_SETTING = "vector_index_on_disk"  # true: IVF lists on disk (retriever.ondisk), kept until --in-memory
# An IVF index is trained again once the collection has grown this much since its training.
GROWTH_BEFORE_RETRAINING = 4
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise RetrieverError(f"invalid index name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


class Index:
    """An opened index. Create with `Index.create`, open with `Index.open`."""

    def __init__(self, folder: Path, catalog: "Catalog"):
        self.folder = folder
        self.name = folder.name
        self.catalog = catalog
        self._lock_fd: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(cls, home: Path, name: str, read_only: bool = False) -> "Index":
        """read_only: for a process that only searches and exits (a CLI search): the catalog is
        read through sqlite3 (catalog_reader.CatalogReader), without importing SQLAlchemy; an
        index whose catalog needs migrating opens as usual."""
        folder = Path(home) / check_name(name)
        if not (folder / CATALOG_FILE).is_file():
            where = f" in {home}" if name == DEFAULT_INDEX else f" {name!r} in {home}"
            raise IndexNotFoundError(f"no index{where}: run `retriever index PATH` first")
        catalog = _open_catalog(folder / CATALOG_FILE, read_only)
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
            from retriever.store.catalog import Catalog, utcnow

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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

    # -- vectors --------------------------------------------------------------------------------

    @property
    def vectors_path(self) -> Path:
        return self.folder / VECTORS_FILE

    def vector_index(self):
        """The FAISS index for the catalog's current generation: the saved file when it is current,
        else rebuilt from the stored vectors (and saved, when this process holds the writer lock).

        A rebuild makes the kind that suits the count (see `wanted_index_kind`). A stale file of
        that kind lends its training (IVF lists, codebooks, nprobe) and is refilled from the
        catalog: none of its vectors is trusted, and nothing is trained again."""
        from retriever.ondisk import is_ondisk
        from retriever.vectors import VectorIndex, read_info

        generation = self.catalog.generation()
        info = read_info(self.vectors_path)
        on_disk = (info is not None and is_ondisk(info.index_type)) or self.on_disk_wanted()
        if on_disk:
            ondisk = self._ondisk_vector_index(generation)
            if ondisk is not None:
                return ondisk
        stale = None
        try:
            if info is not None and is_ondisk(info.index_type):  # unusable on-disk files: never opened read-write
                raise FileNotFoundError(self.vectors_path)
            vi, info = VectorIndex.load(self.vectors_path)
            if info.dim == self.dim:
                if info.generation == generation:
                    return vi
                stale = vi
        except (FileNotFoundError, ValueError):
            pass
        vi = self._rebuild_vectors(stale)
        if self._lock_fd is not None:
            vi.save(self.vectors_path, generation)
        return vi

    def on_disk_wanted(self) -> bool:
        """Whether `retriever optimize --on-disk` put the index on disk (until --in-memory)."""
        return bool(self.catalog.get_setting(ON_DISK_SETTING, False))

    def _ondisk_vector_index(self, generation: int):
        """The on-disk index when it is current; else the build vectors.faiss names, its delta and
        tombstones made again from the catalog (saved, with the lock); else, with the lock, a new
        on-disk build. None when none can be had (no lock and no usable build: the caller builds
        in memory, so that search always works)."""
        from retriever.ondisk import OnDiskVectorIndex

        for _ in range(2):  # a concurrent optimize may swap the files between two reads: look again
            try:
                vi, info = OnDiskVectorIndex.load(self.vectors_path)
            except (FileNotFoundError, ValueError):
                continue
            if info.dim == self.dim and info.generation == generation:
                return vi
            break
        try:
            vi = OnDiskVectorIndex.open_main(self.vectors_path)
        except (FileNotFoundError, ValueError):
            vi = None
        if vi is not None and vi.dim == self.dim:
            vi.resync(self.catalog.iter_vectors(self.dim))
            if self._lock_fd is not None:
                vi.save(self.vectors_path, generation)
            return vi
        count = self.catalog.counts()["stored_vectors"]
        if self._lock_fd is None or count == 0 or not self.on_disk_wanted():
            return None
        from retriever.vectors import VectorIndexError

        try:
            vi, _ = self._build_ondisk(None, count)
        except VectorIndexError:  # e.g. ivf-pq on a collection shrunk under its training minimum
            return None
        vi.save(self.vectors_path, generation)
        return vi

    def _build_ondisk(self, kind: str | None, count: int, target_recall: float | None = None,
                      workers: int | None = None, shard_size: int | None = None, progress=None):
        """A new on-disk index (not yet saved) of `kind` (None: the recorded kind when it is an IVF
        one, else ivf-sq8) from the stored vectors. -> (OnDiskVectorIndex, BuildReport)."""
        from retriever.ondisk import DEFAULT_SHARD_SIZE, build_ondisk, ondisk_kind
        from retriever.vectors import IVF_PQ, IVF_SQ8

        settings = self.vector_index_settings()
        if kind is None:
            kind = settings["kind"] if settings["kind"] in (IVF_SQ8, IVF_PQ) else IVF_SQ8
        return build_ondisk(
            self.dim,
            lambda: self.catalog.iter_vectors(self.dim),
            count,
            self.vectors_path,
            ondisk_kind(kind),
            target_recall=settings["target_recall"] if target_recall is None else target_recall,
            workers=workers,
            shard_size=shard_size or DEFAULT_SHARD_SIZE,
            progress=progress,
        )

    # -- the kind of vector index ---------------------------------------------------------------

    def vector_index_settings(self) -> dict[str, Any]:
        """kind (auto | flat | ivf-sq8 | ivf-pq), target_recall, exact_max: catalog settings that
        `retriever optimize` writes, else the defaults of retriever.vectors."""
        from retriever.vectors import DEFAULT_TARGET_RECALL, default_exact_max

        exact_max = self.catalog.get_setting(EXACT_MAX_SETTING)
        return {
            "kind": self.catalog.get_setting(INDEX_KIND_SETTING, "auto"),
            "target_recall": float(self.catalog.get_setting(TARGET_RECALL_SETTING, DEFAULT_TARGET_RECALL)),
            "exact_max": default_exact_max(self.dim) if exact_max is None else int(exact_max),
        }

    def wanted_index_kind(self, count: int, current=None) -> str:
        """The kind to hold `count` vectors: the one `retriever optimize --kind` pinned, else exact
        up to exact_max vectors and ivf-sq8 above. An IVF index goes back to exact only below half
        the threshold, so a collection that hovers around it is not rebuilt back and forth; an
        exact index that `auto` fell back to (IVF missed the recall target) stays exact until
        the collection has grown fourfold."""
        from retriever.vectors import FLAT, choose_kind

        settings = self.vector_index_settings()
        if settings["kind"] != "auto":
            return settings["kind"]
        exact_max = settings["exact_max"]
        if current is not None and current.is_ivf and count > exact_max // 2:
            return current.index_type
        if current is not None and not current.is_ivf and "fallback_at" in current.params:
            if count < GROWTH_BEFORE_RETRAINING * int(current.params["fallback_at"]):
                return FLAT
        return choose_kind(count, exact_max)

    def _suits(self, vi, count: int) -> bool:
        """Whether `vi` is the wanted kind and, for IVF, trained on a collection of about this size."""
        if vi.index_type != self.wanted_index_kind(count, vi):
            return False
        if vi.is_ivf:
            trained_on = int(vi.params.get("trained_on") or 0)
            return trained_on * GROWTH_BEFORE_RETRAINING >= count
        return True

    def _rebuild_vectors(self, stale=None):
        count = self.catalog.counts()["stored_vectors"]
        if stale is not None and self._suits(stale, count):
            stale.clear()
            for ids, vecs in self.catalog.iter_vectors(self.dim):
                stale.add(ids, vecs)
            return stale
        vi, _ = self._build_or_exact(count)
        return vi

    def _build_or_exact(self, count: int):
        """The recorded kind, or exact when it cannot be built (ivf-pq pinned on a collection that
        has shrunk under its training minimum): search must always work."""
        from retriever.vectors import FLAT, VectorIndexError

        try:
            return self.build_vector_index(None, count)
        except VectorIndexError:
            return self.build_vector_index(FLAT, count)

    def build_vector_index(self, kind: str | None = None, count: int | None = None,
                           target_recall: float | None = None, exact_max: int | None = None):
        """A new index of `kind` (None: the recorded setting, auto unless pinned) from the stored
        vectors (no encoder), not saved. target_recall, exact_max: None for the recorded ones.
        -> (VectorIndex, vectors.BuildReport)."""
        from retriever.vectors import FLAT, FACTORY_FLAT, BuildReport, VectorIndex, build_tuned

        if count is None:
            count = self.catalog.counts()["stored_vectors"]
        settings = self.vector_index_settings()
        kind = kind or settings["kind"]
        if count == 0:
            return VectorIndex(self.dim), BuildReport(FLAT, FACTORY_FLAT, {}, None, None, True, 0)
        return build_tuned(
            self.dim,
            lambda: self.catalog.iter_vectors(self.dim),
            count,
            kind,
            target_recall=settings["target_recall"] if target_recall is None else target_recall,
            exact_max=settings["exact_max"] if exact_max is None else exact_max,
        )

    def adapt_vector_index(self, vectors=None):
        """After an indexing run, with the writer lock: rebuild the FAISS file when the collection
        has outgrown its kind (exact past the threshold, IVF grown fourfold since training, IVF
        shrunk below half the threshold). `vectors`: the run's current in-memory index (None when
        the run changed nothing: then nothing is done). -> the BuildReport, or None.

        An on-disk index stays on disk: its delta grows until `retriever optimize` folds it in."""
        from retriever.ondisk import is_ondisk

        if vectors is None or self._lock_fd is None:
            return None
        if is_ondisk(vectors.index_type):
            return None
        if self.on_disk_wanted() and len(vectors):  # an in-memory stand-in (the on-disk files were lost)
            from retriever.vectors import VectorIndexError

            try:
                vi, report = self._build_ondisk(None, len(vectors))
            except VectorIndexError:  # cannot be built (too few vectors for ivf-pq): stays in memory
                vi = None
            if vi is not None:
                vi.save(self.vectors_path, self.catalog.generation())
                return report
        if self._suits(vectors, len(vectors)):
            return None
        vi, report = self._build_or_exact(len(vectors))
        vi.save(self.vectors_path, self.catalog.generation())
        return report

    def optimize(self, kind: str | None = "auto", target_recall: float | None = None, exact_max: int | None = None,
                 on_disk: bool | None = None, workers: int | None = None, shard_size: int | None = None,
                 progress=None):
        """`retriever optimize`: rebuild from the stored vectors, save, and record the choices
        (kind, target_recall, exact_max: None keeps the recorded one; on_disk) for later rebuilds,
        once the build has succeeded. Needs the writer lock. -> (BuildReport, bytes of the saved
        files).

        on_disk: True builds an on-disk IVF index (retriever.ondisk; kind ivf-sq8 or ivf-pq, None
        or auto: the recorded IVF kind, else ivf-sq8) from `workers` parallel shards of at most
        `shard_size` vectors; False builds in memory; None keeps an on-disk index on disk when no
        kind is given (folding its delta and tombstones into a fresh build), else in memory.
        `progress(stage, done, total)` hears how an on-disk build goes."""
        from retriever.ondisk import build_size, remove_ondisk_files
        from retriever.vectors import VectorIndexError, check_kind

        if self._lock_fd is None:
            raise RetrieverError("optimize needs the writer lock (Index.acquire_lock)")
        if on_disk is None:
            on_disk = kind is None and self.on_disk_wanted()
        if on_disk:
            if kind == "auto":
                kind = None
            if kind is not None:
                check_kind(kind)
        else:
            kind = kind or "auto"
            check_kind(kind)
        if target_recall is not None and not 0 < target_recall <= 1:
            raise VectorIndexError(f"the target recall must be in (0, 1], not {target_recall}")
        count = self.catalog.counts()["stored_vectors"]
        if count == 0:
            raise VectorIndexError(f"index {self.name!r} holds no vectors yet: run `retriever index PATH` first")
        generation = self.catalog.generation()
        if on_disk:
            vi, report = self._build_ondisk(kind, count, target_recall, workers, shard_size, progress)
            vi.save(self.vectors_path, generation)
            values: dict[str, Any] = {INDEX_KIND_SETTING: vi.main.index_type, ON_DISK_SETTING: True}
            size = build_size(vi)
        else:
            vi, report = self.build_vector_index(kind, count, target_recall, exact_max)
            vi.save(self.vectors_path, generation)
            remove_ondisk_files(self.vectors_path)  # an on-disk index it replaces
            values = {INDEX_KIND_SETTING: kind, ON_DISK_SETTING: False}
            size = self.vectors_path.stat().st_size
        if target_recall is not None:
            values[TARGET_RECALL_SETTING] = target_recall
        if exact_max is not None:
            values[EXACT_MAX_SETTING] = int(exact_max)
        self.catalog.set_settings(values)
        return report, size

    # -- ONNX export (retriever.onnx) ------------------------------------------------------------

    def export_onnx(self, encoder=None, images=None):
        """Export the index's encoder (None: load it on the CPU) to ONNX in INDEX/onnx, check it
        against PyTorch, and record the outcome (setting "onnx"); a refused export leaves search on
        PyTorch. Needs the writer lock. Raises MissingDependencyError without onnx/onnxruntime.
        -> onnx.ExportReport."""
        from retriever.onnx import export_index

        if self._lock_fd is None:
            raise RetrieverError("export_onnx needs the writer lock (Index.acquire_lock)")
        return export_index(self, encoder if encoder is not None else self.load_encoder("cpu"), images=images)

    def _onnx_status(self) -> dict[str, Any] | None:
        from retriever.onnx import ONNX_SETTING, valid_record

        record = self.catalog.get_setting(ONNX_SETTING)
        if not record:
            return None
        return {"usable": valid_record(self) is not None, "ok": record.get("ok"), "reason": record.get("reason"),
                "opset": record.get("opset"), "onnxruntime": record.get("onnxruntime"),
                "max_abs_diff": {name: t.get("max_abs_diff") for name, t in (record.get("towers") or {}).items()},
                "indexing": record.get("indexing")}

    def remove_images(self, ids: list[int]) -> None:
        """Drop images (rows and vectors) and bring the FAISS file up to date. Needs the lock."""
        if not ids:
            return
        vectors = self.vector_index()  # current, before the catalog changes
        self.catalog.remove(ids)
        vectors.remove(ids)
        vectors.save(self.vectors_path, self.catalog.generation())

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

        counts = self.catalog.counts()
        info = read_info(self.vectors_path)
        current = info is not None and info.generation == self.catalog.generation()
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
            "images": counts["images"],
            "vectors": info.count if current else counts["stored_vectors"],
            "vector_index": info.kind if info else None,
            "vector_index_current": current,
            "index_type": (on_disk["shown_kind"] if on_disk else info.index_type) if info else None,
            "index_params": (on_disk["shown_params"] if on_disk else _shown_params(info.params)) if info else None,
            "index_recall_at_10": info.recall_at_10 if info else None,
            "on_disk": on_disk["files"] if on_disk else None,
            "failed": counts["failed"],
            "tags": self._tags_status(),
            "onnx": self._onnx_status(),
            "created_at": self.catalog.get_setting("created_at"),
            "last_run": self.catalog.last_run(),
        }


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


def _with_onnx_export(index: Index, encoder, note: str | None) -> str | None:
    from retriever.errors import MissingDependencyError

    try:
        report = index.export_onnx(encoder)
    except MissingDependencyError:
        return note
    if report.ok:
        return note
    refused = f"ONNX export refused ({report.reason}): queries will use PyTorch"
    return f"{note}; {refused}" if note else refused


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
    Index.indexing_encoder); `on_backend` hears the choice, in words, when it is made."""
    from retriever.encoders import create_encoder, default_model_spec, is_config_path

    folder = Path(home) / check_name(name)
    if Index.exists(home, name):
        index = Index.open(home, name)
        try:
            index.check_model_request(model, pretrained)
            index.acquire_lock()

            def load():
                encoder, why = index.indexing_encoder(device, batch_size, backend)
                if on_backend is not None:
                    on_backend(why)
                return encoder

            return index, load, None
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
    if onnx_export:
        try:
            note = _with_onnx_export(index, encoder, note)
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
