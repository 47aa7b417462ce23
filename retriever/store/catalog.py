"""The catalog: one SQLite file per index, through SQLAlchemy 2.0 Core.

It holds every file seen (path, size, mtime, content fingerprint, image metadata, status, error),
the index's settings (model, dim, dates) and, durably, every image's vector: the FAISS file in the
same folder is derived from these rows and can always be rebuilt from them without re-encoding.
It also holds the zero-shot tags computed from those vectors (see retriever/tags.py): a tag is
derived from its image's vector, so it goes whenever that vector is deleted or replaced.

The schema is created and upgraded by named, ordered migrations recorded in `migrations`; each is
applied once, in its own transaction. The tables and the migrations are in schema.py.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import Connection, create_engine, delete, event, func, insert, literal, select, text, update

from retriever.errors import CatalogError
from retriever.store.reader import METADATA_FIELDS, SCHEMA_MIGRATIONS, vector_arrays  # noqa: F401  (re-exported)
from retriever.store.schema import (  # noqa: F401  (re-exported: the names other modules import from here)
    IMAGE_FIELDS,
    MIGRATIONS,
    STATUS_FAILED,
    STATUS_INDEXED,
    TAG_SET_KEY,
    PathText,
    captions,
    images,
    metadata,
    migrations_table,
    runs,
    settings,
    tag_scored,
    tags,
    vectors,
)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class KnownFile:
    ids: tuple[int, ...]  # one for a still image; one per sampled frame for a video
    path: str
    size: int
    mtime_ns: int
    fingerprint: str | None
    status: str

    @property
    def id(self) -> int:
        return self.ids[0]


class Catalog:
    """Typed access to one index's SQLite file. Raises CatalogError on a foreign or newer file."""

    def __init__(self, path: Path, *, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CatalogError(f"no catalog at {self.path}")
        self.engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()

    # -- schema ---------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns their names."""
        from sqlalchemy.exc import DatabaseError

        applied_now: list[str] = []
        known = {name for name, _ in MIGRATIONS}
        try:
            with self.engine.begin() as conn:
                migrations_table.create(conn, checkfirst=True)
                done = set(conn.execute(select(migrations_table.c.name)).scalars())
        except DatabaseError as exc:
            raise CatalogError(f"{self.path} is not a retriever catalog: {exc.orig}") from None
        unknown = done - known
        if unknown:
            raise CatalogError(
                f"{self.path} was written by a newer retriever (migrations {sorted(unknown)}); upgrade retriever"
            )
        for name, apply in MIGRATIONS:
            if name in done:
                continue
            with self.engine.begin() as conn:
                apply(conn)
                conn.execute(insert(migrations_table).values(name=name, applied_at=utcnow()))
            applied_now.append(name)
        return applied_now

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        """A DB-API cursor on a pooled connection: for SQL where SQLAlchemy's row objects would
        cost too much (filters over every image) and that store.reader.CatalogReader shares."""
        with self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    def applied_migrations(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(migrations_table.c.name).order_by(migrations_table.c.name)).scalars())

    # -- settings -------------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            value = conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar_one_or_none()
        return default if value is None else json.loads(value)

    def settings(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {k: json.loads(v) for k, v in conn.execute(select(settings.c.key, settings.c.value))}

    def set_settings(self, values: dict[str, Any], conn: Connection | None = None) -> None:
        def write(c: Connection) -> None:
            for key, value in values.items():
                payload = json.dumps(value)
                updated = c.execute(update(settings).where(settings.c.key == key).values(value=payload))
                if updated.rowcount == 0:
                    c.execute(insert(settings).values(key=key, value=payload))

        if conn is not None:
            write(conn)
        else:
            with self.engine.begin() as c:
                write(c)

    # -- files ----------------------------------------------------------------------------------

    def known_files(self) -> dict[str, KnownFile]:
        """Every file of the catalog by path (a video's frames folded into one entry)."""
        cols = (images.c.id, images.c.path, images.c.size, images.c.mtime_ns, images.c.fingerprint, images.c.status)
        out: dict[str, KnownFile] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(select(*cols)):
                prior = out.get(row.path)
                ids = (prior.ids if prior else ()) + (row.id,)
                out[row.path] = KnownFile(ids, row.path, row.size, row.mtime_ns, row.fingerprint, row.status)
        return out

    def write_batch(self, rows: Sequence[dict[str, Any]], *, remove_ids: Iterable[int] = (),
                    texts: tuple[str, dict[int, tuple]] | None = None, on_commit=None) -> list[int]:
        """One checkpoint, in one transaction. Returns the id of each row.

        A row with an "id" updates that item (its path may change: a moved file); otherwise the
        row is matched by (path, frame_ms), updated if present, inserted if not (then every column
        is needed).
        Only the keys present are written. The "vector" key: an array replaces the stored vector,
        None deletes it, absent leaves it as it is; either way the item's tags, computed from the
        old vector, are dropped (the next `retriever tag` tags it again). `remove_ids` are
        dropped first, with their vectors and tags. `texts`: (engine, {position in rows:
        (fingerprint, lines, text, squashed)}), the text read in those rows' photos, written in
        the same transaction (store/ocr.py).

        `on_commit(rows, ids, remove_ids, generation, stored_vectors)` is called inside the
        transaction, before its COMMIT (the FAISS delta log: retriever.index_log); it may return
        an undo, called when the transaction then does not commit."""
        from retriever.store.writes import write_rows

        remove_ids = list(remove_ids)
        undo, generation = None, None
        try:
            with self.engine.begin() as conn:
                now = utcnow()
                ids = write_rows(conn.connection.dbapi_connection, rows, remove_ids, now)
                if texts:
                    from retriever.store.ocr import write_text_rows

                    cursor = conn.connection.dbapi_connection.cursor()
                    try:
                        write_text_rows(cursor, [(ids[n], *value) for n, value in texts[1].items()], texts[0], now)
                    finally:
                        cursor.close()
                generation = self._bump_generation(conn)
                if on_commit is not None:
                    stored = conn.execute(select(func.count()).select_from(vectors)).scalar_one()
                    undo = on_commit(rows, ids, remove_ids, generation, int(stored))
        except BaseException:
            if undo is not None and not self._committed(generation):
                undo()
            raise
        return ids

    def _committed(self, generation: int | None) -> bool:
        """Whether the catalog reached `generation` (a commit that raised may still have landed)."""
        try:
            return generation is not None and self.generation() >= generation
        except Exception:  # the database is unusable: the commit is taken as lost
            return False

    def remove(self, ids: Iterable[int], on_commit=None) -> None:
        self.write_batch([], remove_ids=ids, on_commit=on_commit)

    def ids_under(self, path: str) -> list[int]:
        """Ids of the file at `path` and of every file below it, if it is a folder."""
        from retriever.files import text_prefixes

        condition = images.c.path == path
        # substr, not LIKE: SQLite's LIKE ignores ASCII case, file names do not.
        for stored in text_prefixes(path.rstrip("/") + "/"):
            condition = condition | (func.substr(images.c.path, 1, len(stored)) == literal(stored))
        with self.engine.connect() as conn:
            return list(conn.execute(select(images.c.id).where(condition)).scalars())

    def indexed_with_fingerprint(self, fingerprint: str) -> list[dict[str, Any]]:
        """The items (one image, or a video's frames) of one indexed file with this content."""
        with self.engine.connect() as conn:
            first = conn.execute(
                select(images.c.path)
                .join(vectors, vectors.c.image_id == images.c.id)
                .where(images.c.fingerprint == fingerprint, images.c.status == STATUS_INDEXED)
                .limit(1)
            ).scalar_one_or_none()
            if first is None:
                return []
            rows = conn.execute(
                select(images)
                .join(vectors, vectors.c.image_id == images.c.id)
                .where(images.c.path == first, images.c.status == STATUS_INDEXED)
                .order_by(images.c.frame_ms)
            ).mappings()
            return [dict(r) for r in rows]

    def _bump_generation(self, conn: Connection) -> int:
        current = conn.execute(select(settings.c.value).where(settings.c.key == "generation")).scalar_one_or_none()
        generation = (json.loads(current) if current else 0) + 1
        self.set_settings({"generation": generation}, conn)
        return generation

    def generation(self) -> int:
        """Counts committed changes to the vectors; the FAISS file records the one it reflects."""
        return int(self.get_setting("generation", 0))

    # -- vectors --------------------------------------------------------------------------------

    def iter_vectors(self, dim: int, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored vectors as (ids int64 (n,), vectors float32 (n, dim)) chunks, by id."""
        return self._iter_vectors(dim, chunk)

    def iter_untagged_vectors(self, dim: int, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Like iter_vectors, for the items not scored under the stored label set: new, changed,
        or not yet reached by an interrupted `retriever tag`. Tags written between chunks do not
        disturb the walk."""
        return self._iter_vectors(dim, chunk, ~_is_scored())

    def _iter_vectors(self, dim: int, chunk: int, *where) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(vectors.c.image_id, vectors.c.vector)
                    .where(vectors.c.image_id > last, *where)
                    .order_by(vectors.c.image_id)
                    .limit(chunk)
                ).all()
            if not rows:
                return
            ids, vecs = vector_arrays(rows, dim)
            yield ids, vecs
            last = int(ids[-1])

    def vectors_for(self, ids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), 500):
                for image_id, blob in conn.execute(
                    select(vectors.c.image_id, vectors.c.vector).where(vectors.c.image_id.in_(chunk))
                ):
                    out[int(image_id)] = np.frombuffer(blob, dtype="<f4").reshape(dim).astype(np.float32)
        return out

    # -- tags -----------------------------------------------------------------------------------

    def tag_set(self) -> dict[str, Any] | None:
        """The stored label set (see tags.TagSet), or None before the first `retriever tag`."""
        return self.get_setting(TAG_SET_KEY)

    def replace_tag_set(self, tag_set: dict[str, Any]) -> int:
        """Store a new label set and drop every tag, computed for the old one, in one transaction:
        no reader ever sees tags next to a set they were not computed for. Returns how many
        tags were dropped."""
        with self.engine.begin() as conn:
            dropped = conn.execute(delete(tags)).rowcount
            conn.execute(delete(tag_scored))
            self.set_settings({TAG_SET_KEY: tag_set}, conn)
        return int(dropped)

    def write_tags(self, image_ids: Sequence[int], rows: Iterable[tuple[int, str, float]]) -> None:
        """Replace the tags of `image_ids` by `rows` (image_id, label, score) and mark the images
        scored, in one transaction. A row whose image no longer holds a vector (removed
        meanwhile) is not written, so a tag never outlives its image; nor is a tag the user
        removed (`retriever untag`)."""
        payload = [{"image_id": int(i), "label": label, "score": float(score)} for i, label, score in rows]
        guarded = text(
            "INSERT INTO tags (image_id, label, score) SELECT :image_id, :label, :score "
            "WHERE EXISTS (SELECT 1 FROM vectors WHERE vectors.image_id = :image_id) "
            "AND NOT EXISTS (SELECT 1 FROM tag_rejections r WHERE r.image_id = :image_id AND r.label = :label)"
        )
        scored = text(
            "INSERT OR IGNORE INTO tag_scored (image_id) SELECT :image_id "
            "WHERE EXISTS (SELECT 1 FROM vectors WHERE vectors.image_id = :image_id)"
        )
        with self.engine.begin() as conn:
            for chunk in _chunks(list(image_ids), 500):
                conn.execute(delete(tags).where(tags.c.image_id.in_(chunk)))
            if payload:
                conn.execute(guarded, payload)
            if len(image_ids):
                conn.execute(scored, [{"image_id": int(i)} for i in image_ids])

    def tagged_ids(self, label: str) -> list[int]:
        """Ids of the items tagged `label` (normalised here, as stored), by id."""
        label = " ".join(str(label).split()).lower()  # tags.normalize_label (not imported: a cycle)
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(tags.c.image_id).where(tags.c.label == label).order_by(tags.c.image_id)
                ).scalars()
            )

    def image_tags(self, image_id: int) -> list[tuple[str, float]]:
        """One item's tags as (label, score), best first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(tags.c.label, tags.c.score)
                .where(tags.c.image_id == image_id)
                .order_by(tags.c.score.desc(), tags.c.label)
            ).all()
        return [(label, float(score)) for label, score in rows]

    def tags_for(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The labels of several items, each list best first; items without tags are absent."""
        out: dict[int, list[str]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), 500):
                rows = conn.execute(
                    select(tags.c.image_id, tags.c.label)
                    .where(tags.c.image_id.in_(chunk))
                    .order_by(tags.c.image_id, tags.c.score.desc(), tags.c.label)
                )
                for image_id, label in rows:
                    out.setdefault(int(image_id), []).append(label)
        return out

    def scored_tags_for(self, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        """Each item's tags as (label, score), best first; items without tags are absent."""
        from retriever.store.tags import scored_tags_for

        return scored_tags_for(self, ids)

    def tag_counts(self) -> dict[str, int]:
        """Items per label, most used first (kept by triggers: no tag is read)."""
        with self.cursor() as cursor:
            rows = cursor.execute("SELECT label, n FROM tag_label_stats ORDER BY n DESC, label").fetchall()
        return {label: int(count) for label, count in rows}

    def tag_coverage(self) -> dict[str, int]:
        """{"tagged": items with a vector scored under the label set (with or without tags),
        "untagged": items with a vector not scored yet, "with_tags": items that have a tag}.
        Counted from small tables and indexes (an item is scored only while it has a vector)."""
        with self.cursor() as cursor:
            total = cursor.execute("SELECT count(*) FROM vectors").fetchone()[0]
            scored = cursor.execute("SELECT count(*) FROM tag_scored").fetchone()[0]
            with_tags = cursor.execute("SELECT count(*) FROM tagged_items").fetchone()[0]
        return {"tagged": int(scored), "untagged": int(total - scored), "with_tags": int(with_tags)}

    # -- queries --------------------------------------------------------------------------------

    def image_rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), 500):
                for row in conn.execute(select(images).where(images.c.id.in_(chunk))).mappings():
                    out[int(row["id"])] = dict(row)
        return out

    def find_by_path(self, path: str) -> dict[str, Any] | None:
        """The row of a file: the image, or the first frame of a video."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(images).where(images.c.path == path).order_by(images.c.frame_ms).limit(1)
            ).mappings().first()
        return dict(row) if row else None

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(select(images.c.status, func.count()).group_by(images.c.status)).all())
            n_vectors = conn.execute(select(func.count()).select_from(vectors)).scalar_one()
        return {
            "images": int(by_status.get(STATUS_INDEXED, 0)),
            "failed": int(by_status.get(STATUS_FAILED, 0)),
            "stored_vectors": int(n_vectors),
        }

    def failures(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(images.c.id, images.c.path, images.c.error, images.c.indexed_at)
                .where(images.c.status == STATUS_FAILED)
                .order_by(images.c.path)
            ).mappings()
            return [dict(r) for r in rows]

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, roots: Sequence[str]) -> int:
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    insert(runs).values(started_at=utcnow(), roots=json.dumps(list(roots)), status="running")
                ).inserted_primary_key[0]
            )

    def close_abandoned_runs(self) -> int:
        """Runs still marked running when the writer lock is free were killed: say so."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(runs).where(runs.c.status == "running").values(status="killed")
            ).rowcount

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(finished_at=utcnow(), status=status, summary=json.dumps(summary))
            )

    def last_run(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).order_by(runs.c.id.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        out["roots"] = json.loads(out["roots"])
        out["summary"] = json.loads(out["summary"]) if out["summary"] else None
        return out

    def close(self) -> None:
        self.engine.dispose()


PAGE_SIZE = 16384


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # A new catalog's pages (an existing one keeps its own): 16 KiB holds seven 512-d float32
    # vectors; SQLite's default 4 KiB holds one 2 KiB vector row per page, half the file empty.
    # Only before WAL: a WAL database's page size is fixed.
    cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")
    # WAL: readers (searches) see the last committed checkpoint while an indexer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _is_scored():
    """EXISTS: the vector's item was scored under the stored label set (it may have no tag)."""
    return select(tag_scored.c.image_id).where(tag_scored.c.image_id == vectors.c.image_id).exists()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
