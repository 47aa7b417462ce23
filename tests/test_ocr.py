"""Text in photos: the reader (rapidocr's PP-OCR models, shipped in its wheel) on generated
photos, the substring filter against what a substring is, and the run's bookkeeping (incremental,
changed photos re-read, corrupt photos recorded, nothing printed outside the CLI).

The reader is loaded once for the module (0.6 s); each photo read costs 0.1-0.4 s, so the photos
are few and small."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from retriever.errors import MissingDependencyError, RetrieverError
from tests.conftest import PHOTOS

pytest.importorskip("rapidocr")

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"  # Debian's fonts-dejavu-core


def font_of(height: int):
    """DejaVu Sans Bold where the system has it, else Pillow's own scalable font (Aileron)."""
    import os

    from PIL import ImageFont

    return ImageFont.truetype(FONT, height) if os.path.exists(FONT) else ImageFont.load_default(height)


def text_photo(text: str, *, size=(960, 640), height=44, angle=0.0, light_on_dark=False, base="coffee.jpg",
               at=(80, 120)):
    """A real photo with `text` drawn on it: dark on a light box, or light on a dark box, turned
    by `angle` degrees."""
    from PIL import Image, ImageDraw, ImageFont

    photo = Image.open(PHOTOS / base).convert("RGB").resize(size)
    font = font_of(height)
    x0, y0, x1, y1 = font.getbbox(text)
    fg, bg = ((255, 255, 255), (20, 20, 30)) if light_on_dark else ((10, 10, 10), (245, 245, 240))
    label = Image.new("RGB", (x1 - x0 + 40, y1 + 30), bg)
    ImageDraw.Draw(label).text((20, 15), text, font=font, fill=fg)
    mask = Image.new("L", label.size, 255)
    if angle:
        label, mask = label.rotate(angle, expand=True, resample=Image.BICUBIC), mask.rotate(angle, expand=True)
    photo.paste(label, at, mask)
    return photo


@pytest.fixture(scope="module")
def reader():
    from retriever.ocr.reader import OcrReader

    return OcrReader()


def squashed(lines) -> str:
    from retriever.ocr import squash

    return " ".join(squash(line.text) for line in lines)


# -- the reader -------------------------------------------------------------------------------------


def test_reads_dark_on_light_light_on_dark_and_rotated_text_with_boxes_in_photo_pixels(reader):
    plain = reader.read(text_photo("ORCHARD-8629"))
    assert [line.text for line in plain] == ["ORCHARD-8629"]
    x0, y0, x1, y1 = plain[0].box
    assert 70 <= x0 <= 120 and 105 <= y0 <= 165 and x1 > x0 + 250 and y1 - y0 < 90  # drawn at (80, 120)
    assert 0.9 <= plain[0].score <= 1.0
    # the same photo given at half size: boxes stay in the photo's own pixels
    half = text_photo("ORCHARD-8629").resize((480, 320))
    scaled = reader.read(half, full_size=(960, 640))
    assert "orchard8629" in squashed(scaled) and abs(scaled[0].box[0] - x0) < 25
    inverted = reader.read(text_photo("PARADISO 2023-0471", light_on_dark=True))
    assert "paradiso20230471" in squashed(inverted).replace(" ", "")
    turned = reader.read(text_photo("INVOICE 5531", angle=25, at=(120, 200)))
    assert "invoice5531" in squashed(turned).replace(" ", "")
    quad = np.array(turned[0].quad)
    top_edge = quad[1] - quad[0]
    assert 15 <= abs(np.degrees(np.arctan2(top_edge[1], top_edge[0]))) <= 35  # the line's own slant


def test_boxes_are_in_the_photo_as_shown_after_exif_orientation(reader, tmp_path):
    from retriever.ocr.run import read_photo

    shown = text_photo("ORCHARD-8629", size=(640, 480))  # as a viewer shows it: 640 wide
    stored = shown.transpose(2)  # Image.ROTATE_90 (counter-clockwise) ...
    exif = stored.getexif()
    exif[0x0112] = 6  # ... and the tag that turns it back for display
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=92)
    lines = read_photo(reader, str(tmp_path / "turned.jpg"))
    assert [line.text for line in lines] == ["ORCHARD-8629"]
    x0, y0, x1, y1 = lines[0].box
    assert x1 - x0 > 3 * (y1 - y0) and 60 <= x0 <= 120 and 110 <= y0 <= 160  # upright, where it was drawn


def test_photos_without_text_give_no_lines(reader):
    from PIL import Image

    for name in ("chelsea.png", "coffee.jpg"):
        assert reader.read(Image.open(PHOTOS / name)) == []
    rng = np.random.default_rng(0)
    assert reader.read(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)) == []  # noise
    assert reader.read(np.zeros((4, 4, 3), dtype=np.uint8)) == []


def test_noise_rules_drop_stray_characters_and_low_confidence():
    from retriever.ocr.reader import MIN_SCORE, keeps

    assert keeps("INVOICE", 0.99) and keeps("A1", MIN_SCORE)
    assert not keeps("I", 0.99) and not keeps("- .", 0.99) and not keeps("INVOICE", MIN_SCORE - 0.01)


# -- the substring filter ---------------------------------------------------------------------------


def test_squash_keeps_letters_and_digits_only():
    from retriever.ocr import squash, squash_lines

    assert squash("2023-0471") == "20230471" and squash("Paradiso!") == "paradiso"
    assert squash("Café Straße") == "cafestrasse" and squash(" - . ") == ""
    assert squash_lines(["AB 12", "--", "cd"]) == "ab12\ncd"


@pytest.fixture
def text_catalog(tmp_path):
    """A catalog of 40 items, some with stored text (written as a run writes it)."""
    from retriever.ocr.run import text_of
    from retriever.ocr.reader import TextLine
    from retriever.store.catalog import Catalog, utcnow
    from retriever.store.ocr import write_texts

    catalog = Catalog(tmp_path / "c.db", create=True)
    rows = [{"path": f"/p/{i:02d}.jpg", "size": 1, "mtime_ns": 1, "frame_ms": None, "fingerprint": f"f{i}",
             "status": "indexed", "error": None, "vector": np.ones(4, np.float32)} for i in range(40)]
    ids = catalog.write_batch(rows)
    texts = {0: ["INVOICE 2023-0471", "Total 12.50"], 1: ["PARADISO"], 2: ["AB", "12"], 3: ["ab-12 x"],
             4: ["Café du Monde"], 5: ["20230"], 6: []}
    line = lambda t: TextLine(t, 0.99, ((0, 0), (10, 0), (10, 5), (0, 5)), (0, 0, 10, 5))  # noqa: E731
    write_texts(catalog, [(ids[n], f"f{n}", *text_of([line(t) for t in lines])) for n, lines in texts.items()],
                "test-engine", utcnow())
    yield catalog, ids
    catalog.close()


def test_text_filter_matches_inside_words_and_numbers_ignoring_case_and_punctuation(text_catalog):
    from retriever.filters import build, matching_ids

    catalog, ids = text_catalog

    def found(*needles):
        return {ids.index(i) for i in matching_ids(catalog, build(texts=list(needles)))}

    assert found("0471") == {0} and found("2023") == {0, 5} and found("paradis") == {1}
    assert found("invoice 2023") == {0} and found("INVOICE-2023-0471") == {0}
    assert found("ab 12") == {3}  # "AB" and "12" on two lines never match as one
    assert found("cafe") == {4} and found("CAFÉ DU") == {4}
    assert found("12") == {0, 2, 3}  # two characters: the scan path
    assert found("0471", "total") == {0} and found("0471", "paradiso") == set()
    assert found("zzzz") == set()
    # brute force: every item whose squashed lines contain the needle, for random needles
    from retriever.ocr import squash

    rng = random.Random(0)
    corpus = {0: "invoice20230471\ntotal1250", 1: "paradiso", 2: "ab\n12", 3: "ab12x", 4: "cafedumonde",
              5: "20230"}
    for _ in range(40):
        source = rng.choice(list(corpus.values())).split("\n")[0]
        start = rng.randrange(len(source))
        needle = source[start:start + rng.randint(1, 6)]
        assert found(needle) == {n for n, t in corpus.items() if any(needle in part for part in t.split("\n"))}
        assert squash(needle) == needle


def test_text_filter_uses_the_trigram_index_not_a_scan(text_catalog):
    from retriever.filters import build
    from retriever.store.filters import filter_query

    catalog, _ = text_catalog
    with catalog.cursor() as cursor:
        sql, params = filter_query(build(texts=["0471"]), cursor)
        plan = " ".join(str(r[-1]) for r in cursor.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "ocr_squash VIRTUAL TABLE" in plan and "SCAN images" not in plan


def test_a_text_without_letters_or_digits_is_a_clear_error():
    from retriever.filters import FilterError, build

    with pytest.raises(FilterError, match="no letter or digit"):
        build(texts=["--"])


# -- runs -------------------------------------------------------------------------------------------


@pytest.fixture
def collection_dir(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    text_photo("INVOICE 2023-0471", size=(720, 480), base="rocket.jpg").save(folder / "receipt.jpg", quality=90)
    text_photo("x", size=(32, 32)).resize((300, 200)).save(folder / "plain.jpg")  # no text to speak of
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_index_with_ocr_reads_stores_and_finds_text_then_rereads_only_what_changed(tmp_path, collection_dir,
                                                                                   capfd):
    import retriever

    home = tmp_path / "home"
    with retriever.open(home, writable=True, new=retriever.NewIndex(model="offline", onnx_export=False)) as photos:
        summary = photos.index([collection_dir], ocr=True)
        assert summary.added == 2 and summary.failed == 1 and summary.text_read == 2 and summary.text_found == 1
        assert any("broken.jpg" in path and "cannot decode" in reason for path, reason in summary.failures)
        text = photos.photo_text(collection_dir / "receipt.jpg")
        assert text["text"] == "INVOICE 2023-0471" and text["engine"].startswith("rapidocr")
        assert photos.photo_text(collection_dir / "plain.jpg")["lines"] == []
        hits = photos.search("", texts=["0471"])
        assert [h.path for h in hits] == [str(collection_dir / "receipt.jpg")]
        assert hits[0].meta["ocr"][0]["text"] == "INVOICE 2023-0471"
        assert photos.search("invoice", k=1)[0].path.endswith("receipt.jpg")  # the keyword index has it
        assert photos.read_text().read == 0  # incremental: nothing new
        # a copy: its vector and its text are the original's, nothing is decoded
        import shutil

        shutil.copy(collection_dir / "receipt.jpg", collection_dir / "receipt-copy.jpg")
        copied = photos.index([collection_dir], ocr=True)
        assert copied.copied == 1 and copied.text_read == 1
        assert photos.photo_text(collection_dir / "receipt-copy.jpg")["text"] == "INVOICE 2023-0471"
        (collection_dir / "receipt-copy.jpg").unlink()
        # the photo changes: its old text goes at once, the next run reads the new one
        text_photo("PARADISO 7788", size=(720, 480), base="rocket.jpg").save(collection_dir / "receipt.jpg")
        again = photos.index([collection_dir], ocr=True)
        assert again.updated == 1 and again.text_read == 1
        assert photos.search("", texts=["0471"]) == []
        assert [h.path for h in photos.search("", texts=["diso 77"])] == [str(collection_dir / "receipt.jpg")]
        # a new engine version (a new rapidocr release) reads every photo again
        from retriever.store.ocr import pending_text_rows

        engine = photos.photo_text(collection_dir / "receipt.jpg")["engine"]
        assert pending_text_rows(photos.idx.catalog, engine) == []
        assert len(pending_text_rows(photos.idx.catalog, engine + " v2")) == 2
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the library (rapidocr's logger included) prints nothing


def test_cli_ocr_text_and_search_text(tmp_path, collection_dir):
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    result = runner.invoke(main, ["index", str(collection_dir), "--model", "offline", "--no-onnx", "-q", *home])
    assert result.exit_code == 0, result.output
    receipt = str(collection_dir / "receipt.jpg")
    result = runner.invoke(main, ["text", receipt, *home])
    assert result.exit_code == 1 and "has not been read yet: run `retriever ocr`" in result.output
    (collection_dir / "plain.jpg").write_bytes(b"damaged since it was indexed")
    result = runner.invoke(main, ["ocr", "--json", "-q", *home])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["read"], summary["with_text"], summary["failed"], summary["items_read"]) == (1, 1, 1, 1)
    result = runner.invoke(main, ["ocr", *home])  # the damaged photo: tried again, said again
    assert result.exit_code == 0 and "failed: " in result.output and "plain.jpg" in result.output
    result = runner.invoke(main, ["text", receipt, *home])
    assert result.exit_code == 0 and result.stdout.strip() == "INVOICE 2023-0471"
    shown = json.loads(runner.invoke(main, ["text", receipt, "--json", *home]).stdout)
    assert shown["lines"][0]["box"][2] > shown["lines"][0]["box"][0]
    result = runner.invoke(main, ["search", "--text", "23-04", "--no-daemon", "--paths", *home])
    assert result.exit_code == 0 and result.stdout.strip() == receipt
    result = runner.invoke(main, ["search", "--no-daemon", *home])
    assert result.exit_code == 2 and "--text TEXT" in result.output
    result = runner.invoke(main, ["text", str(tmp_path / "nowhere.jpg"), *home])
    assert result.exit_code == 1 and "is not in index" in result.output


def test_without_rapidocr_the_error_names_the_extra(tmp_path, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name == "rapidocr":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    from retriever.ocr.reader import engine_version

    with pytest.raises(MissingDependencyError, match=r"pip install 'retriever\[ocr\]'"):
        engine_version()
    folder = tmp_path / "p"
    folder.mkdir()
    result = CliRunner().invoke(main, ["index", str(folder), "--ocr", "--model", "offline",
                                       "--home", str(tmp_path / "h")])
    assert result.exit_code == 1 and "retriever[ocr]" in result.output and "Traceback" not in result.output
    assert isinstance(MissingDependencyError("x"), RetrieverError)


def test_the_migration_keeps_captions_searchable_and_adds_text(tmp_path, monkeypatch):
    import retriever.store.catalog as catalog_module
    from retriever.keywords import keyword_search
    from retriever.store.catalog import Catalog

    path = tmp_path / "c.db"
    before = [m for m in catalog_module.MIGRATIONS if m[0] != "006_ocr"]
    monkeypatch.setattr(catalog_module, "MIGRATIONS", before)
    old = Catalog(path, create=True)
    [image_id] = old.write_batch([{"path": "/p/IMG_1.jpg", "size": 1, "mtime_ns": 1, "frame_ms": None,
                                   "fingerprint": "f", "status": "indexed", "error": None}])
    with old.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO captions VALUES (?, 'a lighthouse at dusk', 'm', 'f', 'now')", (image_id,))
    old.close()
    monkeypatch.undo()
    upgraded = Catalog(path)
    assert "006_ocr" in upgraded.applied_migrations()
    assert keyword_search(upgraded, "lighthouse", 5)[0][0] == image_id
    assert keyword_search(upgraded, "img_1", 5)[0][0] == image_id
    upgraded.close()
