"""The catalog's schema: its tables (SQLAlchemy Core) and the named, ordered migrations that create
and upgrade them. `Catalog.migrate` (catalog.py) applies each pending one once, in its own
transaction, and records it in `migrations`.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import (
    REAL,
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)

from retriever.files import path_from_text, path_to_text
from retriever.store.reader import (  # noqa: F401  (the index expressions are re-exported)
    CAMERA_SQL,
    FORMAT_SQL,
    LONG_SIDE_SQL,
    METADATA_FIELDS,
    SCHEMA_MIGRATIONS,
    SHORT_SIDE_SQL,
)

STATUS_INDEXED = "indexed"
STATUS_FAILED = "failed"

metadata = MetaData()


class PathText(TypeDecorator):
    """File paths as TEXT. A name that is not valid UTF-8 (Linux allows any bytes) arrives from
    os.walk with surrogate escapes, which SQLite cannot store: files.path_to_text spells it
    reversibly, and valid names are stored as they are."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else path_to_text(value)

    def process_result_value(self, value, dialect):
        return None if value is None else path_from_text(value)


migrations_table = Table(
    "migrations",
    metadata,
    Column("name", String, primary_key=True),
    Column("applied_at", String, nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),  # JSON
)

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),  # AUTOINCREMENT: an id is never reused, so FAISS ids stay unique
    Column("path", PathText, nullable=False),  # absolute; (path, frame_ms) is unique
    Column("frame_ms", Integer),  # a video frame's timestamp; NULL for a still image
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("fingerprint", String),  # BLAKE2b-128 of the whole file, hex
    Column("status", String, nullable=False),  # indexed | failed
    Column("error", Text),  # why it failed, one line
    Column("width", Integer),
    Column("height", Integer),
    Column("format", String),  # Pillow's name: JPEG, PNG, ...
    Column("taken_at", String),  # EXIF DateTimeOriginal as ISO 8601, local time as the camera wrote it
    Column("camera_make", String),
    Column("camera_model", String),
    Column("gps_lat", Float),
    Column("gps_lon", Float),
    Column("indexed_at", String, nullable=False),  # when this row was last written, UTC ISO
    sqlite_autoincrement=True,
)

vectors = Table(
    "vectors",
    metadata,
    Column("image_id", Integer, primary_key=True),  # = images.id = the FAISS id
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian, `dim` values, L2-normalised
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("started_at", String, nullable=False),
    Column("finished_at", String),
    Column("roots", Text, nullable=False),  # JSON list
    Column("summary", Text),  # JSON counts; NULL while running or if interrupted before the end
    Column("status", String, nullable=False),  # running | completed | interrupted | failed
)

# Zero-shot tags (retriever/tags.py). Created by migration 002_tags, whose DDL is the reference.
tags = Table(
    "tags",
    metadata,
    Column("image_id", Integer, primary_key=True, autoincrement=False),  # = images.id
    Column("label", Text, primary_key=True),  # normalised: tags.normalize_label
    Column("score", REAL, nullable=False),  # the label's calibrated probability for this image
)
TAG_SET_KEY = "tag_set"  # settings key: the label set, its templates, threshold, scale and model id
# Created by migration 004_tag_upkeep. tag_scored: the items scored under the stored label set
# (an item may be scored and have no tag: open-world tags). tag_rejections: tags a user removed
# (`retriever untag`); a later run never writes them again. A trigger drops both with the image.
tag_scored = Table(
    "tag_scored",
    metadata,
    Column("image_id", Integer, primary_key=True, autoincrement=False),  # = images.id
)
tag_rejections = Table(
    "tag_rejections",
    metadata,
    Column("image_id", Integer, primary_key=True, autoincrement=False),  # = images.id
    Column("label", Text, primary_key=True),  # normalised
    Column("created_at", String, nullable=False),  # UTC ISO
)

# VLM captions (retriever/vlm/captions.py; statements in store/captions.py). Created by migration
# 003_captions, whose DDL is the reference.
captions = Table(
    "captions",
    metadata,
    Column("image_id", Integer, primary_key=True),  # = images.id
    Column("caption", Text, nullable=False),
    Column("model", String, nullable=False),  # the VLM that wrote it: a hub id or an absolute folder
    Column("fingerprint", String),  # the image's fingerprint when captioned
    Column("created_at", String, nullable=False),  # UTC ISO
)

# Columns a caller may set on an image row (everything but id).
IMAGE_FIELDS = tuple(c.name for c in images.columns if c.name != "id")
assert set(METADATA_FIELDS) <= set(IMAGE_FIELDS)


def _m001_initial(conn: Connection) -> None:
    for table in (settings, images, vectors, runs):
        table.create(conn)
    # One row per still image, one per sampled frame of a video.
    conn.execute(text("CREATE UNIQUE INDEX ux_images_item ON images (path, IFNULL(frame_ms, -1))"))
    conn.execute(text("CREATE INDEX ix_images_fingerprint ON images (fingerprint)"))
    conn.execute(text("CREATE INDEX ix_images_status ON images (status)"))


def _m002_tags(conn: Connection) -> None:
    # Written out rather than tags.create(): a migration is frozen, the Table object may move on.
    # WITHOUT ROWID: rows are clustered by (image_id, label), so an image's tags are one range
    # (read, or dropped with the image) and the search filter's EXISTS is one key look-up.
    conn.execute(
        text(
            "CREATE TABLE tags ("
            " image_id INTEGER NOT NULL,"
            " label TEXT NOT NULL,"
            " score REAL NOT NULL,"
            " PRIMARY KEY (image_id, label)"
            ") WITHOUT ROWID"
        )
    )
    conn.execute(text("CREATE INDEX ix_tags_label ON tags (label)"))


def _m003_captions(conn: Connection) -> None:
    # VLM captions (retriever/vlm/captions.py) and `keywords`, an FTS5 index of every item's file
    # name and caption (retriever/keywords.py), filled here for the items already indexed.
    # Triggers keep it in step whoever writes images or captions: a caption goes with its item,
    # and with the item's old content (a new fingerprint). Without FTS5 in this SQLite, only the
    # captions table is made (keyword search then finds nothing).
    conn.execute(text("CREATE TABLE captions (image_id INTEGER PRIMARY KEY, caption TEXT NOT NULL, "
                      "model TEXT NOT NULL, fingerprint TEXT, created_at TEXT NOT NULL)"))
    conn.execute(text("CREATE TRIGGER tr_captions_stale AFTER UPDATE OF fingerprint ON images "
                      "WHEN old.fingerprint IS NOT new.fingerprint "
                      "BEGIN DELETE FROM captions WHERE image_id = new.id; END"))
    conn.execute(text("CREATE TRIGGER tr_captions_gone AFTER DELETE ON images "
                      "BEGIN DELETE FROM captions WHERE image_id = old.id; END"))
    from sqlalchemy.exc import OperationalError

    try:
        conn.execute(text("CREATE VIRTUAL TABLE keywords USING fts5(name, caption, "
                          "tokenize = 'porter unicode61 remove_diacritics 2')"))
    except OperationalError:  # no such module: fts5
        return
    name = "replace({0}, rtrim({0}, replace({0}, '/', '')), '')"  # the path after its last '/'
    for statement in (
        f"INSERT INTO keywords (rowid, name, caption) SELECT id, {name.format('path')}, '' FROM images",
        f"CREATE TRIGGER tr_keywords_add AFTER INSERT ON images BEGIN INSERT INTO keywords "
        f"(rowid, name, caption) VALUES (new.id, {name.format('new.path')}, ''); END",
        f"CREATE TRIGGER tr_keywords_move AFTER UPDATE OF path ON images WHEN old.path IS NOT new.path "
        f"BEGIN UPDATE keywords SET name = {name.format('new.path')} WHERE rowid = new.id; END",
        "CREATE TRIGGER tr_keywords_gone AFTER DELETE ON images BEGIN DELETE FROM keywords WHERE rowid = old.id; END",
        "CREATE TRIGGER tr_keywords_caption AFTER INSERT ON captions "
        "BEGIN UPDATE keywords SET caption = new.caption WHERE rowid = new.image_id; END",
        "CREATE TRIGGER tr_keywords_recaption AFTER UPDATE OF caption ON captions "
        "BEGIN UPDATE keywords SET caption = new.caption WHERE rowid = new.image_id; END",
        "CREATE TRIGGER tr_keywords_uncaption AFTER DELETE ON captions "
        "BEGIN UPDATE keywords SET caption = '' WHERE rowid = old.image_id; END",
    ):
        conn.execute(text(statement))


def _m004_tag_upkeep(conn: Connection) -> None:
    # Open-world tags: "has a tag" no longer means "was scored", so scoring is recorded on its own;
    # items tagged under the old rule count as scored. Removed tags are remembered per item.
    conn.execute(text("CREATE TABLE tag_scored (image_id INTEGER PRIMARY KEY)"))
    conn.execute(text("INSERT INTO tag_scored (image_id) SELECT DISTINCT image_id FROM tags"))
    conn.execute(text("CREATE TABLE tag_rejections (image_id INTEGER NOT NULL, label TEXT NOT NULL, "
                      "created_at TEXT NOT NULL, PRIMARY KEY (image_id, label)) WITHOUT ROWID"))
    conn.execute(text("CREATE TRIGGER tr_tag_upkeep_gone AFTER DELETE ON images BEGIN "
                      "DELETE FROM tag_scored WHERE image_id = old.id; "
                      "DELETE FROM tag_rejections WHERE image_id = old.id; END"))


_DATE_OF = "COALESCE({0}taken_at, strftime('%Y-%m-%dT%H:%M:%S', {0}mtime_ns / 1000000000, 'unixepoch', 'localtime'))"


def _m005_filter_columns(conn: Connection) -> None:
    # Every search filter is answered from an index, never a scan of the images table
    # (benchmarks/scale.py; tests/test_scale.py checks the query plans). An image's date (EXIF
    # date taken, else the file's mtime in local time) depends on the time zone, which an
    # expression index may not: it is stored in date_key when the row is written (by the catalog's
    # writer, store/writes.py, or else by these triggers).
    conn.execute(text("ALTER TABLE images ADD COLUMN date_key TEXT"))
    conn.execute(text(f"UPDATE images SET date_key = {_DATE_OF.format('')}"))
    for statement in (
        f"CREATE TRIGGER tr_images_date_add AFTER INSERT ON images WHEN new.date_key IS NULL BEGIN "
        f"UPDATE images SET date_key = {_DATE_OF.format('new.')} WHERE id = new.id; END",
        f"CREATE TRIGGER tr_images_date_change AFTER UPDATE OF taken_at, mtime_ns ON images BEGIN "
        f"UPDATE images SET date_key = {_DATE_OF.format('new.')} WHERE id = new.id; END",
        "CREATE INDEX ix_images_date ON images (date_key)",
        f"CREATE INDEX ix_images_camera ON images ({CAMERA_SQL})",
        f"CREATE INDEX ix_images_format ON images ({FORMAT_SQL})",
        "CREATE INDEX ix_images_frames ON images (frame_ms) WHERE frame_ms IS NOT NULL",
        f"CREATE INDEX ix_images_size ON images ({LONG_SIDE_SQL}, {SHORT_SIDE_SQL})",
        "CREATE INDEX ix_images_gps ON images (gps_lat, gps_lon)",
        # keyword rows of new items: written in bulk by the catalog's writer (store/writes.py),
        # a quarter of an insert's cost as a per-row trigger
        "DROP TRIGGER IF EXISTS tr_keywords_add",
        # count(*) of vectors reads this small index, not 2 KB rows (seconds at 1 M)
        "CREATE INDEX ix_vectors_count ON vectors (image_id)",
    ):
        conn.execute(text(statement))
    # `retriever tags` and status without reading every tag: per-label counts and score sums,
    # and the items that have a tag, kept by triggers; a label's best score is one seek of
    # ix_tags_label_score.
    conn.execute(text("CREATE TABLE tag_label_stats (label TEXT PRIMARY KEY, n INTEGER NOT NULL, "
                      "score_sum REAL NOT NULL) WITHOUT ROWID"))
    conn.execute(text("INSERT INTO tag_label_stats SELECT label, count(*), total(score) FROM tags GROUP BY label"))
    conn.execute(text("CREATE TABLE tagged_items (image_id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
    conn.execute(text("INSERT INTO tagged_items SELECT image_id, count(*) FROM tags GROUP BY image_id"))
    for statement in (
        "CREATE TRIGGER tr_tag_stats_add AFTER INSERT ON tags BEGIN "
        "INSERT INTO tag_label_stats (label, n, score_sum) VALUES (new.label, 1, new.score) "
        "ON CONFLICT (label) DO UPDATE SET n = n + 1, score_sum = score_sum + new.score; "
        "INSERT INTO tagged_items (image_id, n) VALUES (new.image_id, 1) "
        "ON CONFLICT (image_id) DO UPDATE SET n = n + 1; END",
        "CREATE TRIGGER tr_tag_stats_drop AFTER DELETE ON tags BEGIN "
        "UPDATE tag_label_stats SET n = n - 1, score_sum = score_sum - old.score WHERE label = old.label; "
        "DELETE FROM tag_label_stats WHERE label = old.label AND n <= 0; "
        "UPDATE tagged_items SET n = n - 1 WHERE image_id = old.image_id; "
        "DELETE FROM tagged_items WHERE image_id = old.image_id AND n <= 0; END",
        "CREATE TRIGGER tr_tag_stats_rescore AFTER UPDATE OF score ON tags BEGIN "
        "UPDATE tag_label_stats SET score_sum = score_sum - old.score + new.score WHERE label = new.label; END",
        "CREATE INDEX ix_tags_label_score ON tags (label, score)",
        "DROP INDEX ix_tags_label",
    ):
        conn.execute(text(statement))


def _m006_ocr(conn: Connection) -> None:
    # Text read in photos (retriever/ocr/; the SQL is in retriever/store/ocr.py): one row per item
    # read, even when no text was found (lines '[]'), so that a photo is read once. Like a
    # caption, it goes with the content it was read from: triggers drop it when the item's
    # fingerprint changes or the item leaves the catalog. The keyword index gets a third column,
    # `text`, kept equal to the item's text by triggers (so rebuilt here: FTS5 has no ADD
    # COLUMN), and `ocr_squash` indexes each item's text as trigrams for the substring filter
    # (`--text`): letters and digits only, case-folded, lines kept apart by a newline.
    conn.execute(text("CREATE TABLE ocr (image_id INTEGER PRIMARY KEY, engine TEXT NOT NULL, fingerprint TEXT, "
                      "lines TEXT NOT NULL, text TEXT NOT NULL, squashed TEXT NOT NULL, created_at TEXT NOT NULL)"))
    conn.execute(text("CREATE TRIGGER tr_ocr_stale AFTER UPDATE OF fingerprint ON images "
                      "WHEN old.fingerprint IS NOT new.fingerprint "
                      "BEGIN DELETE FROM ocr WHERE image_id = new.id; END"))
    conn.execute(text("CREATE TRIGGER tr_ocr_gone AFTER DELETE ON images "
                      "BEGIN DELETE FROM ocr WHERE image_id = old.id; END"))
    from sqlalchemy.exc import OperationalError

    has_keywords = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keywords'")).first()
    if has_keywords:
        name = "replace({0}, rtrim({0}, replace({0}, '/', '')), '')"  # the path after its last '/'
        for statement in (
            "DROP TRIGGER IF EXISTS tr_keywords_move",
            "DROP TRIGGER IF EXISTS tr_keywords_gone",
            "DROP TRIGGER IF EXISTS tr_keywords_caption",
            "DROP TRIGGER IF EXISTS tr_keywords_recaption",
            "DROP TRIGGER IF EXISTS tr_keywords_uncaption",
            "DROP TABLE keywords",
            "CREATE VIRTUAL TABLE keywords USING fts5(name, caption, text, "
            "tokenize = 'porter unicode61 remove_diacritics 2')",
            f"INSERT INTO keywords (rowid, name, caption, text) SELECT images.id, {name.format('images.path')}, "
            "COALESCE(captions.caption, ''), '' FROM images LEFT JOIN captions ON captions.image_id = images.id",
            f"CREATE TRIGGER tr_keywords_move AFTER UPDATE OF path ON images WHEN old.path IS NOT new.path "
            f"BEGIN UPDATE keywords SET name = {name.format('new.path')} WHERE rowid = new.id; END",
            "CREATE TRIGGER tr_keywords_gone AFTER DELETE ON images BEGIN DELETE FROM keywords WHERE rowid = old.id; END",
            "CREATE TRIGGER tr_keywords_caption AFTER INSERT ON captions "
            "BEGIN UPDATE keywords SET caption = new.caption WHERE rowid = new.image_id; END",
            "CREATE TRIGGER tr_keywords_recaption AFTER UPDATE OF caption ON captions "
            "BEGIN UPDATE keywords SET caption = new.caption WHERE rowid = new.image_id; END",
            "CREATE TRIGGER tr_keywords_uncaption AFTER DELETE ON captions "
            "BEGIN UPDATE keywords SET caption = '' WHERE rowid = old.image_id; END",
            "CREATE TRIGGER tr_keywords_ocr AFTER INSERT ON ocr "
            "BEGIN UPDATE keywords SET text = new.text WHERE rowid = new.image_id; END",
            "CREATE TRIGGER tr_keywords_reocr AFTER UPDATE OF text ON ocr "
            "BEGIN UPDATE keywords SET text = new.text WHERE rowid = new.image_id; END",
            "CREATE TRIGGER tr_keywords_unocr AFTER DELETE ON ocr "
            "BEGIN UPDATE keywords SET text = '' WHERE rowid = old.image_id; END",
        ):
            conn.execute(text(statement))
    try:
        conn.execute(text("CREATE VIRTUAL TABLE ocr_squash USING fts5(squashed, tokenize = 'trigram')"))
    except OperationalError:  # no FTS5, or an SQLite before 3.34 (no trigram tokenizer): --text scans
        return
    for statement in (
        "CREATE TRIGGER tr_ocr_squash_add AFTER INSERT ON ocr "
        "BEGIN INSERT INTO ocr_squash (rowid, squashed) VALUES (new.image_id, new.squashed); END",
        "CREATE TRIGGER tr_ocr_squash_change AFTER UPDATE OF squashed ON ocr BEGIN "
        "DELETE FROM ocr_squash WHERE rowid = old.image_id; "
        "INSERT INTO ocr_squash (rowid, squashed) VALUES (new.image_id, new.squashed); END",
        "CREATE TRIGGER tr_ocr_squash_drop AFTER DELETE ON ocr "
        "BEGIN DELETE FROM ocr_squash WHERE rowid = old.image_id; END",
    ):
        conn.execute(text(statement))


def _m007_regions(conn: Connection) -> None:
    # Region vectors (retriever/regions.py; the SQL is in retriever/store/regions.py): one row per
    # item whose regions were encoded: the boxes (JSON, the photo's pixels after EXIF
    # orientation), their vectors (float16, row after row) and the scheme and model that made them.
    # They go with the content: triggers drop them when the item's fingerprint changes or it leaves
    # the catalog (a moved file keeps its row: the id stays). `version` grows with every write: the
    # region FAISS file records the largest it holds, so a reader sees when it is stale.
    conn.execute(text("CREATE TABLE regions (image_id INTEGER PRIMARY KEY, scheme TEXT NOT NULL, fingerprint TEXT, "
                      "boxes TEXT NOT NULL, vectors BLOB NOT NULL, dim INTEGER NOT NULL, version INTEGER NOT NULL, "
                      "created_at TEXT NOT NULL)"))
    conn.execute(text("CREATE TABLE region_log (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"))
    conn.execute(text("INSERT INTO region_log (id, version) VALUES (1, 0)"))
    for statement in (
        "CREATE TRIGGER tr_regions_stale AFTER UPDATE OF fingerprint ON images "
        "WHEN old.fingerprint IS NOT new.fingerprint BEGIN DELETE FROM regions WHERE image_id = new.id; END",
        "CREATE TRIGGER tr_regions_gone AFTER DELETE ON images BEGIN DELETE FROM regions WHERE image_id = old.id; END",
        # every change of the table moves the log's version, deletions included
        "CREATE TRIGGER tr_regions_dropped AFTER DELETE ON regions "
        "BEGIN UPDATE region_log SET version = version + 1 WHERE id = 1; END",
    ):
        conn.execute(text(statement))


def _m008_concepts(conn: Connection) -> None:
    # Concepts learned from examples (retriever/concepts.py; the SQL is in retriever/store/concepts.py).
    # A concept holds its model, its fitted scorer (the unit query vector, bias and threshold as
    # JSON + a float32 blob) and a version that grows with every refit. Its examples keep their own
    # vectors (float32): a photo that leaves the catalog, or an image from outside it, stays an
    # example (image_id then NULL or never set). label +1: shows it; -1: does not.
    conn.execute(text("CREATE TABLE concepts (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, model_id TEXT NOT NULL, "
                      "dim INTEGER NOT NULL, vector BLOB, fit TEXT NOT NULL DEFAULT '{}', version INTEGER NOT NULL DEFAULT 0, "
                      "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"))
    conn.execute(text("CREATE TABLE concept_examples (id INTEGER PRIMARY KEY, concept_id INTEGER NOT NULL "
                      "REFERENCES concepts (id) ON DELETE CASCADE, label INTEGER NOT NULL, image_id INTEGER, "
                      "source TEXT NOT NULL, vector BLOB NOT NULL, added_at TEXT NOT NULL)"))
    conn.execute(text("CREATE INDEX ix_concept_examples_image ON concept_examples (image_id)"))
    conn.execute(text("CREATE TRIGGER tr_concept_examples_gone AFTER DELETE ON images "
                      "BEGIN UPDATE concept_examples SET image_id = NULL WHERE image_id = old.id; END"))


# Named, ordered, applied once each. Append only; never edit or reorder a released migration.
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_tags", _m002_tags),
    ("003_captions", _m003_captions),
    ("004_tag_upkeep", _m004_tag_upkeep),
    ("005_filter_columns", _m005_filter_columns),
    ("006_ocr", _m006_ocr),
    ("007_regions", _m007_regions),
    ("008_concepts", _m008_concepts),
]
assert tuple(name for name, _ in MIGRATIONS) == SCHEMA_MIGRATIONS, "store.reader.SCHEMA_MIGRATIONS lags"
