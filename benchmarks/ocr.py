"""Text in photos (retriever/ocr/): how much rendered text the reader finds, how little it invents,
whether `search --text` finds a photo by part of a code, and what OCR costs an indexing run.

    python benchmarks/ocr.py                           # the report (caltech101-test + distractors-test)
    python benchmarks/ocr.py --fit                     # MIN_SCORE and det_side on train + tune (prints them)
    python benchmarks/ocr.py --skip-index --engine rapidocr --n-text 40 --n-plain 40   # a quick look
    python benchmarks/ocr.py --work /tmp/ocr-bench     # keep photos and reads (reused next time)

The photos (generated, seeded, cached in --work under a key of the generator's parameters):
  with text   --n-text (150) real photos upscaled to a long side of 1024-2048 px (Gaussian noise,
              sigma 3, so they are not smooth), each with one CODE (ORCHARD-8629, 2023-0471,
              KX42-PRT, A742B19; unique in the set) and 0-2 more items: a WORD (INVOICE, Paradiso,
              bakery: upper, title or lower case), a NUMBER (4-6 digits or a price) or a DATE
              (2023-04-17, 17/04/2023, 12.03.2021). Each item: one of 10 DejaVu and Liberation
              fonts (sans, serif, mono, bold, narrow); a text height drawn evenly from the buckets
              12-19, 20-39, 40-79, 80-120 px (height = the font's cap height, the height of "H" and
              of digits, in the photo's pixels); a style drawn evenly from
                box_dark    dark text on a light plain box
                box_light   light text on a dark plain box
                box_colour  black or white text on a saturated coloured box
                plain       dark or light text straight on the photo (no box), the one of the two
                            that contrasts with the photo under it
                plain_colour  coloured text on the photo (no box), dark or bright by the same rule
              (no box: placed where >= 90% of its strokes differ by >= 60 grey levels from the
              photo under them, so a person can read it; the photo may be busy, even hold text);
              a rotation of 0 (40%) or uniform in -30..30 degrees (60%); items never overlap.
              A quarter of the photos are saved as JPEG quality 50, the rest quality 90.
  without text  --n-plain (150) other photos of the same sources, made the same way, no text.
Sources alternate between Caltech-101 and the distractors (Google's BACKGROUND images: more of
them hold real text). Report split: caltech101-test + distractors-test; --fit: caltech101-train +
distractors-tune (the report never sees a photo the fit saw). examples/photos (15) and
scikit-image's data.page() (a book page; the words written down below) and data.text()
(handwritten maths on a board: no ground truth, its lines are listed) are read too.

Measures (engine: rapidocr = retriever.ocr.reader.OcrReader() with the library's constants and
default ONNX Runtime threads (1 since the reader took a `threads` argument: an indexing run reads
one photo per core); the photo decoded with PIL, the read() call timed, one photo at a time). With
--work, each engine's reads are kept in work/reads/, keyed by the split, the reader's source file
and constants (tesseract: its version and settings), and reused by the next run, timings
included (the table says so); --reread reads again.
  word recall   a rendered item counts as read if its squashed form (letters and digits,
                case-folded: retriever.ocr.squash) occurs in the squashed text of one of the
                photo's recognised lines; by text-height bucket, and overall for text >= 20 px.
  CER           per item: the Levenshtein distance between the item (case-folded, spaces removed,
                punctuation kept) and the best-matching part of a recognised line whose box
                overlaps the item's, over the item's length, capped at 1 (no such line: 1); mean
                by bucket.
  misses        each item >= 20 px the reader missed, read again at min_score 0 (the lines over
                it, with their confidence) and cut out (a margin of twice its height) and read
                alone: a threshold, detection or recognition miss.
  false text    share of the photos without rendered text that get no line at all, over all of
                them and by source: Caltech-101 photos (few hold text) and distractors (Google
                images: many are posters, book covers and screenshots, whose real text is read
                too: every line found is listed for a reader to judge).
  --text        (not with --skip-index) the with-text and without-text photos indexed together by
                `retriever index --ocr --model offline` into a fresh home; for each photo's code a
                4-character substring of its squashed code that occurs in no other photo's
                rendered text, searched with `retriever search --text SUB --json`: the share of
                codes whose photo comes first (and the share found at all). The stored text of
                the without-text photos gives the index's own false-text share.
  throughput    (not with --skip-index) --n-big (100) 12-MP JPEGs (benchmarks/draft_agreement.py's
                generator, from caltech101-test, cached in --big-cache), one in ten with 2-3
                rendered items of 24-240 px (the buckets doubled: a 12-MP photo is about twice the
                linear size); `retriever index` and `retriever index --ocr` (offline encoder) each
                on a fresh home, the same model cache (prepared first), timed spawn to exit, one
                after the other; ocr_slowdown = index_ocr_s / index_s; the word recall of the text
                photos from the text the --ocr run stored.
  tesseract     (--engine tesseract|both; both is the default when the binary is there)
                `tesseract IMG stdout --psm 11 -c thresholding_method=0 tsv` on the same photos
                (0: Otsu, tesseract's default; --tess-thresholding 2: Sauvola, adaptive), one
                process a photo (its time includes decoding the file and tesseract's own
                threads); words with a confidence >= TESS_MIN_CONF
                (fitted by --fit with the same rule) joined into its lines, lines with fewer than 2
                letters or digits dropped like the reader's: the same measures.
Targets (issue 18): word recall >= 0.9 for text >= 20 px; >= 0.95 of the text-free photos with no
text; the code's photo first for >= 0.9 of the codes >= 20 px (all codes: shown too); OCR at most
doubles indexing time (ocr_slowdown <= 2).

--fit (caltech101-train + distractors-tune only): the reader run with min_score 0 at det_side 736,
960 and 1280 (each line keeps its confidence), then for each candidate MIN_SCORE (0.3 .. 0.95)
the recall of all items and the text-free share at the library's DET_SIDE. Rule: the candidate
with the highest text-free share among those whose recall of all items is within 0.01 of the best
candidate's (a tie: the lower threshold). Real text read in the text-free photos has a
confidence near 1 whatever the threshold, so the share moves only with the doubtful lines: the
lines on text-free photos that the chosen threshold drops against 0.5 are listed to judge them.
det_side: recall by bucket, text-free share and seconds a photo at the chosen threshold;
suggested: the smallest det_side whose recall of all items is within 0.01 of the best
det_side's. tesseract (with --engine tesseract|both): its word confidence threshold by the same
rule.

Prints FIRST one JSON line holding every figure, THEN a readable table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import colorsys
import datetime as _dt
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from speed import cpu_name, loadavg

DATASETS = REPO.parent / "shared" / "datasets"
SPLITS = {"report": ("caltech101-test", "distractors-test"), "fit": ("caltech101-train", "distractors-tune")}
EXAMPLES = REPO / "examples" / "photos"
FONT_DIR = Path("/usr/share/fonts/truetype")
FONTS = ("dejavu/DejaVuSans.ttf", "dejavu/DejaVuSerif.ttf", "dejavu/DejaVuSansMono.ttf", "dejavu/DejaVuSans-Bold.ttf",
         "dejavu/DejaVuSerif-Bold.ttf", "liberation/LiberationSans-Regular.ttf",
         "liberation/LiberationSerif-Regular.ttf", "liberation/LiberationMono-Regular.ttf",
         "liberation/LiberationSans-Bold.ttf", "liberation/LiberationSansNarrow-Regular.ttf")
BUCKETS = ((12, 19), (20, 39), (40, 79), (80, 120))
BIG_BUCKETS = ((24, 39), (40, 79), (80, 159), (160, 240))  # 12-MP photos: about twice the linear size
STYLES = ("box_dark", "box_light", "box_colour", "plain", "plain_colour")
LONG_SIDE = (1024, 2048)
JPEG_LOW, JPEG_LOW_SHARE, JPEG_HIGH = 50, 0.25, 90
NOISE_SIGMA = 3.0
LEGIBLE_CONTRAST, LEGIBLE_SHARE = 60, 0.9  # text without a box: >= 90% of its strokes >= 60 grey levels off the photo
GENERATOR_VERSION = 2  # bump when the generator changes: cached sets get a new folder
MIN_SCORES = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
DET_SIDES = (736, 960, 1280)
FIT_RECALL_LOSS = 0.01
PERMISSIVE_MIN_SCORE = 0.5  # --fit lists what the chosen threshold drops against this one
TESS_MIN_CONF = 50  # tesseract word confidence (0-100) below which a word is dropped (fitted: --fit)
TESS_THRESHOLDING = 0  # tesseract's thresholding_method: 0 Otsu (its default), 1 LeptonicaOtsu, 2 Sauvola
TESS_CONFS = (0, 20, 30, 40, 50, 60, 70, 80, 90)
TARGETS = {"recall_20plus": 0.9, "no_text_clean_share": 0.95, "text_rank1_share": 0.9, "ocr_slowdown": 2.0}

WORDS = ("invoice", "paradiso", "bakery", "station", "pharmacy", "exit", "museum", "harbour", "cafe", "welcome",
         "library", "garden", "hotel", "market", "platform", "ticket", "receipt", "total", "parking", "theatre",
         "gallery", "kitchen", "warning", "bridge", "summer", "festival", "airport", "lemonade", "bicycle", "orchard",
         "danger", "closed", "pizzeria", "mountain", "express", "cinema", "office", "harvest", "village", "bistro",
         "laundry", "dentist", "florist", "bookshop", "garage", "entrance", "police", "taxi", "menu", "hospital")
CODE_WORDS = ("ORCHARD", "PARADISO", "INVOICE", "HARBOUR", "MERIDIAN", "SUMMIT", "ATLAS", "COBALT", "FALCON",
              "JUNIPER", "NORTH", "QUARTZ", "TANGO", "VERTEX", "WILLOW", "ZENITH", "BEACON", "CEDAR", "DELTA")
# data.page(): the words of the page (its cut-off last line, a URL, left out)
PAGE_TEXT = ("Region-based segmentation\n"
             "Let us first determine markers of the coins and the\n"
             "background. These markers are pixels that we can label\n"
             "unambiguously as either object or background. Here,\n"
             "the markers are found at the two extreme parts of the\n"
             "histogram of grey values:\n"
             ">>> markers = np.zeros_like(coins)")


def log(msg: str) -> None:
    print(f"[ocr] {msg}", file=sys.stderr, flush=True)


def rnd(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def squash(text: str) -> str:
    from retriever.ocr import squash as _squash

    return _squash(text)


def fold(text: str) -> str:
    """What CER compares: case-folded, spaces removed, punctuation kept."""
    return "".join(text.casefold().split())


def bucket_of(height: float, buckets: Sequence[tuple[int, int]] = BUCKETS) -> str:
    for lo, hi in buckets:
        if lo <= height <= hi:
            return f"{lo}-{hi}"
    return "other"


# -- the generator ---------------------------------------------------------------------------------


def source_lists(split: str, seed: int) -> tuple[list[Path], list[Path]]:
    from retriever.files import walk

    out = []
    for name in SPLITS[split]:
        paths = sorted(Path(e.path) for e in walk([str(DATASETS / name)]))
        if not paths:
            raise SystemExit(f"no images under {DATASETS / name}")
        random.Random(f"{seed}-{name}").shuffle(paths)
        out.append(paths)
    return out[0], out[1]


def interleave(a: list[Path], b: list[Path]) -> list[Path]:
    """Alternately from a and b (the rest of the longer one after)."""
    out = []
    for i in range(max(len(a), len(b))):
        out += ([a[i]] if i < len(a) else []) + ([b[i]] if i < len(b) else [])
    return out


def make_string(kind: str, rng: random.Random) -> str:
    if kind == "word":
        w = rng.choice(WORDS)
        return rng.choice((w.upper(), w.title(), w))
    if kind == "number":
        if rng.random() < 0.5:
            return str(rng.randint(1000, 999_999))
        return f"{rng.randint(10, 999)}.{rng.randint(0, 99):02d}"
    if kind == "date":
        y, m, d = rng.randint(1990, 2025), rng.randint(1, 12), rng.randint(1, 28)
        return rng.choice((f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{d:02d}.{m:02d}.{y}"))
    if kind == "code":
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        form = rng.randrange(4)
        if form == 0:
            return f"{rng.choice(CODE_WORDS)}-{rng.randint(0, 9999):04d}"
        if form == 1:
            return f"{rng.randint(1990, 2025)}-{rng.randint(0, 9999):04d}"
        if form == 2:
            return (f"{''.join(rng.choice(letters) for _ in range(2))}{rng.randint(10, 99)}-"
                    f"{''.join(rng.choice(letters) for _ in range(3))}")
        return f"{rng.choice(letters)}{rng.randint(100, 999)}{rng.choice(letters)}{rng.randint(10, 99)}"
    raise ValueError(kind)


_FONT_CACHE: dict[tuple[str, int], Any] = {}


def font_for(font: str, height: int):
    """The font at the size whose cap height ("H") is `height` pixels."""
    from PIL import ImageFont

    key = (font, height)
    if key not in _FONT_CACHE:
        ref = ImageFont.truetype(str(FONT_DIR / font), 200)
        _, top, _, bottom = ref.getbbox("H")
        size = max(4, round(200 * height / (bottom - top)))
        _FONT_CACHE[key] = ImageFont.truetype(str(FONT_DIR / font), size)
    return _FONT_CACHE[key]


def text_masks(text: str, font: str, height: int, boxed: bool, angle: float):
    """(text mask, box mask or None, quad of the text's ink rectangle) of one item, rotated by
    `angle` degrees (counter-clockwise), in the masks' pixels."""
    from PIL import Image, ImageDraw

    f = font_for(font, height)
    left, top, right, bottom = f.getbbox(text)
    pad = round(0.3 * height) + 3 if boxed else 3
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), text, font=f, fill=255)
    box = Image.new("L", (w, h), 255) if boxed else None
    corners = [(pad, pad), (w - pad, pad), (w - pad, h - pad), (pad, h - pad)]
    if angle:
        mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
        box = box.rotate(angle, resample=Image.BICUBIC, expand=True) if box is not None else None
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        cx, cy, nx, ny = w / 2, h / 2, mask.width / 2, mask.height / 2
        corners = [(nx + (x - cx) * c + (y - cy) * s, ny - (x - cx) * s + (y - cy) * c) for x, y in corners]
    return mask, box, corners


def luminance(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def pick_colours(style: str, under: float, rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """(text colour, box colour or None); `under`: mean luminance of the photo under the item."""
    def grey(lo: int, hi: int) -> tuple[int, int, int]:
        v = rng.randint(lo, hi)
        tint = [rng.randint(-12, 12) for _ in range(3)]
        return tuple(max(0, min(255, v + t)) for t in tint)  # type: ignore[return-value]

    if style == "box_dark":
        return grey(0, 70), grey(215, 250)
    if style == "box_light":
        return grey(215, 255), grey(5, 70)
    if style == "box_colour":
        r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.95))
        box = (round(r * 255), round(g * 255), round(b * 255))
        return ((0, 0, 0) if luminance(box) > 140 else (255, 255, 255)), box
    if style == "plain":
        return (grey(0, 50) if under > 128 else grey(215, 255)), None
    # plain_colour: a saturated colour at least 100 levels of luminance away from the photo under it
    for _ in range(200):
        r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.35, 1.0))
        colour = (round(r * 255), round(g * 255), round(b * 255))
        if abs(luminance(colour) - under) >= 100:
            return colour, None
    return ((0, 0, 0) if under > 128 else (255, 255, 255)), None


def place_items(photo, specs: list[dict[str, Any]], rng: random.Random, buckets, tries: int = 40) -> list[dict[str, Any]]:
    """Draws each item of `specs` (kind, height) onto `photo` where it fits without overlapping
    another; an item that does not fit is tried upright, then with other strings of its kind, then
    left out. Returns the items drawn, with their quads and boxes in the photo's pixels."""
    import numpy as np

    placed: list[dict[str, Any]] = []
    rects: list[tuple[float, float, float, float]] = []
    grey_photo = np.asarray(photo.convert("L"), dtype=np.float32)
    margin = max(8, round(0.01 * max(photo.size)))
    for spec in specs:
        font, style = rng.choice(FONTS), rng.choice(STYLES)
        angle = 0.0 if rng.random() < 0.4 else rng.uniform(-30, 30)
        done = False
        for attempt in range(5):
            text = spec["text"] if attempt == 0 else make_string(spec["kind"], rng)
            if spec["kind"] == "code" and attempt and text in spec["taken"]:
                continue
            a = angle if attempt < 2 else 0.0
            mask, box, quad = text_masks(text, font, spec["height"], style.startswith("box"), a)
            w, h = mask.size
            if w + 2 * margin > photo.width or h + 2 * margin > photo.height:
                continue
            strokes = np.asarray(mask, dtype=np.float32) > 64
            for _ in range(tries):
                x, y = rng.randint(margin, photo.width - w - margin), rng.randint(margin, photo.height - h - margin)
                if not all(x + w + margin < r0 or r2 + margin < x or y + h + margin < r1 or r3 + margin < y
                           for r0, r1, r2, r3 in rects):
                    continue
                under = grey_photo[y:y + h, x:x + w][strokes]
                colour, box_colour = pick_colours(style, float(under.mean()) if under.size else 128.0, rng)
                # no box: legible to a person, most strokes well apart from the photo under them
                if box is not None or (np.abs(under - luminance(colour)) >= LEGIBLE_CONTRAST).mean() >= LEGIBLE_SHARE:
                    break
            else:
                continue
            if box is not None:
                photo.paste(box_colour, (x, y, x + w, y + h), box)
            photo.paste(colour, (x, y, x + w, y + h), mask)
            q = [(round(x + px, 1), round(y + py, 1)) for px, py in quad]
            xs, ys = [p[0] for p in q], [p[1] for p in q]
            rects.append((x, y, x + w, y + h))
            placed.append({"text": text, "kind": spec["kind"], "height": spec["height"],
                           "bucket": bucket_of(spec["height"], buckets), "font": Path(font).stem, "style": style,
                           "angle": round(a, 1), "colour": colour, "box_colour": box_colour, "quad": q,
                           "box": [min(xs), min(ys), max(xs), max(ys)]})
            if spec["kind"] == "code":
                spec["taken"].add(text)
            done = True
            break
        if not done:
            spec["dropped"] = True
    return placed


def item_specs(rng: random.Random, taken: set[str], buckets, extra: tuple[int, int] = (0, 2)) -> list[dict[str, Any]]:
    """One code (unique in the set) and 0-2 other items, each with a height drawn evenly from the
    buckets."""
    while True:
        code = make_string("code", rng)
        if code not in taken:
            break
    kinds = ["code"] + [rng.choice(("word", "word", "number", "date")) for _ in range(rng.randint(*extra))]
    specs = []
    for kind in kinds:
        lo, hi = rng.choice(buckets)
        specs.append({"kind": kind, "text": code if kind == "code" else make_string(kind, rng),
                      "height": rng.randint(lo, hi), "taken": taken})
    return specs


def open_rgb(path: Path):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        return (ImageOps.exif_transpose(im) or im).convert("RGB")


def save_photo(image, dest: Path, quality: int, seed: int, sigma: float = NOISE_SIGMA) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32)
    if sigma > 0:
        pixels = pixels + np.random.default_rng(seed).standard_normal(pixels.shape, dtype=np.float32) * sigma
    out = Image.fromarray(np.rint(np.clip(pixels, 0, 255)).astype(np.uint8))
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    out.save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, dest)


def upscaled(src: Path, rng: random.Random):
    from PIL import Image

    im = open_rgb(src)
    long_side = rng.randint(*LONG_SIDE)
    scale = long_side / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)


def code_substrings(photos: list[dict[str, Any]], seed: int) -> None:
    """Each code's search needle: a 4-character window of its squashed code that occurs in no
    other photo's rendered text (None when every window does: counted apart)."""
    rng = random.Random(f"needle-{seed}")
    texts = [[squash(it["text"]) for it in p["items"]] for p in photos]
    for i, p in enumerate(photos):
        code = next((it for it in p["items"] if it["kind"] == "code"), None)
        if code is None:
            p["needle"] = None
            continue
        s = squash(code["text"])
        others = [t for j, ts in enumerate(texts) if j != i for t in ts]
        windows = sorted({s[k:k + 4] for k in range(len(s) - 3)})
        unique = [w for w in windows if not any(w in t for t in others)]
        p["needle"] = rng.choice(unique) if unique else None


def make_split(split: str, n_text: int, n_plain: int, work: Path, seed: int) -> dict[str, Any]:
    """The split's photos, generated into (or reused from) work/SPLIT-KEY/{text,plain}; returns the
    manifest {"folder", "text": [photo...], "plain": [photo...]}, photo = {"path", "source", "size",
    "quality", "items", "needle"}."""
    params = {"v": GENERATOR_VERSION, "split": split, "n_text": n_text, "n_plain": n_plain, "seed": seed,
              "sources": SPLITS[split], "long_side": LONG_SIDE, "fonts": FONTS, "buckets": BUCKETS}
    key = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=5).hexdigest()
    folder = work / f"{split}-{key}"
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if all(Path(p["path"]).is_file() for p in manifest["text"] + manifest["plain"]):
            log(f"{split}: reusing {len(manifest['text'])} + {len(manifest['plain'])} photos in {folder}")
            return manifest
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "text").mkdir(parents=True)
    (folder / "plain").mkdir(parents=True)
    classes, distractors = source_lists(split, seed)
    sources = interleave(classes, distractors)
    if n_text + n_plain > len(sources):
        raise SystemExit(f"{split}: only {len(sources)} source photos for {n_text + n_plain}")
    t0 = time.perf_counter()
    taken: set[str] = set()
    manifest: dict[str, Any] = {"folder": str(folder), "params": params, "text": [], "plain": [], "dropped": 0}
    for i, src in enumerate(sources[:n_text + n_plain]):
        with_text = i % 4 in (0, 3) and len(manifest["text"]) < n_text or len(manifest["plain"]) >= n_plain
        rng = random.Random(f"{seed}-{split}-{i}")
        photo = upscaled(src, rng)
        items: list[dict[str, Any]] = []
        if with_text:
            specs = item_specs(rng, taken, BUCKETS)
            items = place_items(photo, specs, rng, BUCKETS)
            manifest["dropped"] += sum(bool(s.get("dropped")) for s in specs)
        quality = JPEG_LOW if rng.random() < JPEG_LOW_SHARE else JPEG_HIGH
        name = f"{i:04d}-{src.parent.name}-{src.stem}.jpg"
        dest = folder / ("text" if with_text else "plain") / name
        save_photo(photo, dest, quality, rng.randrange(2**32))
        manifest["text" if with_text else "plain"].append(
            {"path": str(dest), "source": str(src.relative_to(DATASETS)) if src.is_relative_to(DATASETS) else str(src),
             "size": list(photo.size), "quality": quality, "items": items})
        if (i + 1) % 50 == 0:
            log(f"  {split}: made {i + 1} of {n_text + n_plain} photos")
    code_substrings(manifest["text"], seed)
    manifest["generate_s"] = rnd(time.perf_counter() - t0, 1)
    manifest_path.write_text(json.dumps(manifest))
    log(f"{split}: made {len(manifest['text'])} + {len(manifest['plain'])} photos in {manifest['generate_s']} s "
        f"({manifest['dropped']} items left out: no room, or no legible place)")
    return manifest


def make_big(n_big: int, work: Path, big_cache: Path, seed: int) -> dict[str, Any]:
    """n_big 12-MP JPEGs (draft_agreement.photo_set, from caltech101-test), one in ten (0, 10, ...)
    with 2-3 rendered items drawn on it (saved at quality 90), the rest hard-linked."""
    from draft_agreement import photo_set

    made = photo_set(DATASETS / "caltech101-test", n_big, big_cache, kind="upscale")
    folder = work / f"big-{n_big}-s{seed}-v{GENERATOR_VERSION}"
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if len(manifest["photos"]) == len(made.paths) and all(Path(p["path"]).is_file() for p in manifest["photos"]):
            return manifest
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "photos").mkdir(parents=True)
    photos = []
    taken: set[str] = set()
    for i, src in enumerate(made.paths):
        dest = folder / "photos" / src.name
        items: list[dict[str, Any]] = []
        if i % 10 == 0:
            rng = random.Random(f"{seed}-big-{i}")
            im = open_rgb(src)
            items = place_items(im, item_specs(rng, taken, BIG_BUCKETS, extra=(1, 2)), rng, BIG_BUCKETS)
            save_photo(im, dest, JPEG_HIGH, rng.randrange(2**32), sigma=0)
        else:
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
        photos.append({"path": str(dest), "items": items})
    manifest = {"folder": str(folder), "photos": photos, "about": made.describe()}
    manifest_path.write_text(json.dumps(manifest))
    return manifest


# -- reading ---------------------------------------------------------------------------------------


def read_rapidocr(paths: Sequence[str], det_side: int | None = None, min_score: float | None = None,
                  what: str = "") -> dict[str, dict[str, Any]]:
    """path -> {"lines": [[text, score, box]], "s": seconds of read()} with one OcrReader."""
    from retriever.ocr import reader as R

    reader = R.OcrReader(det_side=R.DET_SIDE if det_side is None else det_side,
                         min_score=R.MIN_SCORE if min_score is None else min_score)
    reader.read(open_rgb(Path(paths[0])))  # loads the models (not timed)
    out = {}
    for k, path in enumerate(paths):
        image = open_rgb(Path(path))
        t0 = time.perf_counter()
        lines = reader.read(image)
        out[path] = {"lines": [[ln.text, round(ln.score, 4), [round(v, 1) for v in ln.box]] for ln in lines],
                     "s": time.perf_counter() - t0}
        if (k + 1) % 50 == 0:
            log(f"  rapidocr{what}: read {k + 1} of {len(paths)} photos")
    return out


def read_tesseract(paths: Sequence[str], what: str = "", thresholding: int = TESS_THRESHOLDING
                   ) -> dict[str, dict[str, Any]]:
    """path -> {"words": [[line key, text, conf, box]], "s": seconds of the process}."""
    out = {}
    for k, path in enumerate(paths):
        t0 = time.perf_counter()
        proc = subprocess.run(["tesseract", str(path), "stdout", "--psm", "11", "-c",
                               f"thresholding_method={thresholding}", "tsv"], capture_output=True,
                              text=True, timeout=300, check=False)
        seconds = time.perf_counter() - t0
        words = []
        for row in proc.stdout.splitlines()[1:]:
            f = row.split("\t")
            if len(f) < 12 or f[0] != "5" or not f[11].strip():
                continue
            x, y, w, h = (float(v) for v in f[6:10])
            words.append(["-".join(f[1:5]), f[11].strip(), float(f[10]), [x, y, x + w, y + h]])
        out[path] = {"words": words, "s": seconds}
        if (k + 1) % 50 == 0:
            log(f"  tesseract{what}: read {k + 1} of {len(paths)} photos")
    return out


def reader_threads() -> int | str | None:
    """OcrReader's default ONNX Runtime threads (None: ONNX Runtime's own default, every core)."""
    import inspect

    from retriever.ocr import reader as R

    p = inspect.signature(R.OcrReader).parameters.get("threads")
    return "not a parameter" if p is None else p.default


def tesseract_version() -> str:
    return subprocess.run(["tesseract", "--version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0].strip()


def reader_fingerprint() -> str:
    """What a cached read depends on: the reader's source, the engine and its constants."""
    from retriever.ocr import reader as R

    parts = [Path(R.__file__).read_bytes(), R.engine_version().encode(),
             repr((R.DET_SIDE, R.MIN_SCORE, R.MIN_CHARS, R.UPSCALE_MAX)).encode()]
    return hashlib.blake2b(b"\0".join(parts), digest_size=5).hexdigest()


def cached_reads(args: argparse.Namespace, work: Path, name: str, compute) -> tuple[dict[str, Any], str | None]:
    """compute() (path -> read), kept in work/reads/NAME.json and reused next time (not with
    --reread, nor without --work). Returns (reads, the date of a reused read or None)."""
    path = work / "reads" / f"{name}.json"
    if path.is_file() and not args.reread:
        stored = json.loads(path.read_text())
        log(f"  reusing the reads of {stored['date']} ({path}; --reread reads again)")
        return stored["reads"], stored["date"]
    reads = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                                "load_avg": loadavg(), "reads": reads}))
    return reads, None


def tesseract_lines(words: list, min_conf: float) -> list[list[Any]]:
    """Tesseract's words with conf >= min_conf grouped into its lines, [text, conf, box] like the
    reader's; lines with fewer than 2 letters or digits dropped (the reader's MIN_CHARS)."""
    groups: dict[str, list] = {}
    for key, text, conf, box in words:
        if conf >= min_conf:
            groups.setdefault(key, []).append((text, conf, box))
    lines = []
    for ws in groups.values():
        text = " ".join(t for t, _, _ in ws)
        if sum(ch.isalnum() for ch in text) < 2:
            continue
        boxes = [b for _, _, b in ws]
        lines.append([text, min(c for _, c, _ in ws) / 100,
                      [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                       max(b[3] for b in boxes)]])
    return lines


def filtered(lines: list, min_score: float) -> list:
    return [ln for ln in lines if ln[1] >= min_score]


# -- measures --------------------------------------------------------------------------------------


def substring_distance(needle: str, hay: str) -> int:
    """The least Levenshtein distance between `needle` and any part of `hay`."""
    if not needle:
        return 0
    prev = [0] * (len(hay) + 1)  # a match may start anywhere in hay
    for i, a in enumerate(needle, 1):
        cur = [i] + [0] * len(hay)
        for j, b in enumerate(hay, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b))
        prev = cur
    return min(prev)


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def item_result(item: dict[str, Any], lines: list) -> tuple[bool, float, str | None]:
    """(read, CER, the nearest line's text) of one rendered item among a photo's lines."""
    s = squash(item["text"])
    found = any(s in squash(ln[0]) for ln in lines)
    target = fold(item["text"])
    near = [ln for ln in lines if overlaps(ln[2], item["box"])]
    best, best_text = len(target), None
    for ln in near:
        d = substring_distance(target, fold(ln[0]))
        if d < best:
            best, best_text = d, ln[0]
    if best_text is None and near:
        best_text = near[0][0]
    return found, min(1.0, best / max(1, len(target))), best_text


def text_metrics(photos: list[dict[str, Any]], lines_of: dict[str, list], buckets=BUCKETS) -> dict[str, Any]:
    """Recall and CER by bucket (and by style, rotation, JPEG quality, font, kind) over the items of
    `photos`; the missed items."""
    names = [f"{lo}-{hi}" for lo, hi in buckets]
    rows = []
    for p in photos:
        for it in p["items"]:
            found, cer, near = item_result(it, lines_of[p["path"]])
            rows.append({**it, "found": found, "cer": cer, "near": near, "photo": Path(p["path"]).name,
                         "quality": p.get("quality", JPEG_HIGH)})

    def group(key) -> dict[str, dict[str, Any]]:
        out: dict[str, list] = {}
        for r in rows:
            out.setdefault(key(r), []).append(r)
        return {k: {"n": len(v), "recall": rnd(sum(r["found"] for r in v) / len(v)),
                    "cer": rnd(statistics.fmean(r["cer"] for r in v))} for k, v in sorted(out.items())}

    by_bucket = group(lambda r: r["bucket"])
    big_enough = [r for r in rows if r["height"] >= buckets[1][0]]
    def angle(r: dict[str, Any]) -> str:
        return "0" if r["angle"] == 0 else ("1-15" if abs(r["angle"]) <= 15 else "15-30")

    return {
        "items": len(rows),
        "word_recall_by_height": {k: by_bucket[k]["recall"] for k in names if k in by_bucket},
        "cer_by_height": {k: by_bucket[k]["cer"] for k in names if k in by_bucket},
        "n_by_height": {k: by_bucket[k]["n"] for k in names if k in by_bucket},
        "word_recall": rnd(sum(r["found"] for r in rows) / len(rows)) if rows else None,
        f"word_recall_{buckets[1][0]}plus": rnd(sum(r["found"] for r in big_enough) / len(big_enough)) if big_enough else None,
        "by_style": group(lambda r: r["style"]),
        "by_angle": group(angle),
        "by_quality": group(lambda r: f"q{r['quality']}"),
        "by_kind": group(lambda r: r["kind"]),
        "by_font": group(lambda r: r["font"]),
        "by_style_20plus": group(lambda r: r["style"] if r["height"] >= buckets[1][0] else "_small"),
        "missed_20plus": [{k: r[k] for k in ("photo", "text", "height", "style", "angle", "font", "quality", "near")}
                          for r in rows if not r["found"] and r["height"] >= buckets[1][0]],
    }


REAL_TEXT = HERE / "data" / "ocr_real_text.json"  # source photos that show text of their own (labelled by eye)


def real_text_sources() -> set[str]:
    try:
        return set(json.loads(REAL_TEXT.read_text())["photos"])
    except (OSError, ValueError, KeyError):
        return set()


def clean_metrics(photos: list[dict[str, Any]], lines_of: dict[str, list]) -> dict[str, Any]:
    """The share of photos without rendered text that get no line, over all of them and by source
    (Caltech-101 classes, the distractors: Google images, many of them posters and screenshots);
    and over those of them that show no text of their own either (`verified`: every photo not
    listed in benchmarks/data/ocr_real_text.json, text seen by eye)."""
    with_text = [(Path(p["path"]).name, p["source"], [ln[0] for ln in lines_of[p["path"]]]) for p in photos
                 if lines_of[p["path"]]]
    real = real_text_sources()
    verified = [p for p in photos if p["source"] not in real]

    def share(kind: str) -> float | None:
        mine = [p for p in photos if source_kind(p["source"]) == kind]
        return rnd(sum(not lines_of[p["path"]] for p in mine) / len(mine)) if mine else None

    return {"photos": len(photos), "no_text_clean_share": rnd(1 - len(with_text) / len(photos)) if photos else None,
            "no_text_clean_share_caltech": share("caltech"), "no_text_clean_share_distractors": share("distractors"),
            "photos_caltech": sum(source_kind(p["source"]) == "caltech" for p in photos),
            "verified_text_free": len(verified),
            "no_text_clean_share_verified": (rnd(sum(not lines_of[p["path"]] for p in verified) / len(verified))
                                             if verified else None),
            "with_text": [{"photo": n, "source": s, "lines": ls} for n, s, ls in with_text]}


def source_kind(source: str) -> str:
    return "distractors" if source.startswith("distractors") else "caltech"


def page_metrics(lines: list) -> dict[str, Any]:
    """data.page(): the share of its words (4+ letters or digits) read, and the CER of the whole
    page (squashed: letters and digits only, in reading order)."""
    words = [w for w in (squash(t) for t in PAGE_TEXT.split()) if len(w) >= 4]
    hay = [squash(ln[0]) for ln in lines]
    found = sum(any(w in h for h in hay) for w in words)
    truth = squash(PAGE_TEXT)
    read = "".join(hay)
    return {"words": len(words), "word_recall": rnd(found / len(words)),
            "page_cer": rnd(levenshtein(truth, read) / len(truth)), "lines": [ln[0] for ln in lines]}


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def seconds_stats(results: dict[str, dict[str, Any]], paths: Sequence[str]) -> dict[str, Any]:
    s = [results[p]["s"] for p in paths]
    return {"mean": rnd(statistics.fmean(s)), "median": rnd(statistics.median(s)), "max": rnd(max(s)),
            "total": rnd(sum(s), 1)}


def evaluate(manifest: dict[str, Any], lines_of: dict[str, list]) -> dict[str, Any]:
    t = text_metrics(manifest["text"], lines_of)
    c = clean_metrics(manifest["plain"], lines_of)
    return {**t, **c}


# -- the index: --text and throughput ----------------------------------------------------------------


def retriever_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVER_")}
    env.update(RETRIEVER_CACHE_DIR=str(cache), RETRIEVER_NO_DAEMON="1")
    return env


def retriever_bin() -> str:
    exe = Path(sys.executable).parent / "retriever"
    if not exe.is_file():
        raise SystemExit(f"no console script at {exe}: pip install -e . in this venv")
    return str(exe)


def has_ocr_cli() -> bool:
    try:
        return subprocess.run([retriever_bin(), "ocr", "--help"], capture_output=True, timeout=120,
                              check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_index(folder: Path, home: Path, cache: Path, ocr: bool) -> dict[str, Any]:
    shutil.rmtree(home, ignore_errors=True)
    cmd = [retriever_bin(), "index", str(folder), "--home", str(home), "--model", "offline", "--json", "-q",
           *(["--ocr"] if ocr else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=retriever_env(cache), stdin=subprocess.DEVNULL,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return {"wall_s": wall, "summary": json.loads(lines[-1]) if lines else None}


def stored_lines(home: Path) -> tuple[dict[str, list], dict[str, int]]:
    """path -> [[text, score, box]] of every photo with stored text, and the index's text counts."""
    from retriever.index import Index
    from retriever.store.ocr import text_counts, text_rows

    out: dict[str, list] = {}
    with Index.open(home, "default", read_only=True) as idx:
        for _, path, _, lines, _ in text_rows(idx.catalog):
            out[path] = [[ln["text"], ln["score"], ln["box"]] for ln in json.loads(lines)]
        counts = text_counts(idx.catalog)
    return out, counts


def search_text(home: Path, cache: Path, needle: str) -> list[str]:
    proc = subprocess.run([retriever_bin(), "search", "--text", needle, "--json", "--home", str(home), "-k", "10",
                           "--no-daemon"], capture_output=True, text=True, env=retriever_env(cache),
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"retriever search --text {needle} exited {proc.returncode}: {proc.stderr[-800:]}")
    return [json.loads(ln)["path"] for ln in proc.stdout.splitlines() if ln.startswith("{")]


def prepare_cache(work: Path, cache: Path) -> None:
    """One small index so that the timed runs find the offline encoder's files in the model cache."""
    tiny = work / "tiny"
    shutil.rmtree(tiny, ignore_errors=True)
    tiny.mkdir(parents=True)
    for p in sorted(EXAMPLES.glob("*.jpg"))[:4]:
        shutil.copyfile(p, tiny / p.name)
    run_index(tiny, work / "home-prep", cache, ocr=True)


def text_search(manifest: dict[str, Any], work: Path, cache: Path) -> dict[str, Any]:
    home = work / "home-report"
    log(f"indexing {len(manifest['text'])} + {len(manifest['plain'])} photos with --ocr ...")
    run = run_index(Path(manifest["folder"]), home, cache, ocr=True)
    stored, counts = stored_lines(home)
    lines_of = {p["path"]: stored.get(str(Path(p["path"]).resolve()), []) for p in manifest["text"] + manifest["plain"]}
    log(f"  {run['wall_s']:.1f} s; searching {sum(p['needle'] is not None for p in manifest['text'])} code substrings ...")
    rows = []
    t0 = time.perf_counter()
    for p in manifest["text"]:
        if p["needle"] is None:
            continue
        code = next(it for it in p["items"] if it["kind"] == "code")
        got = search_text(home, cache, p["needle"])
        me = str(Path(p["path"]).resolve())
        rank = got.index(me) + 1 if me in got else None
        rows.append({"photo": Path(p["path"]).name, "code": code["text"], "needle": p["needle"], "height": code["height"],
                     "bucket": code["bucket"], "rank": rank, "results": len(got),
                     "first": Path(got[0]).name if got else None})
    search_s = time.perf_counter() - t0
    big = [r for r in rows if r["height"] >= BUCKETS[1][0]]
    by_bucket: dict[str, list] = {}
    for r in rows:
        by_bucket.setdefault(r["bucket"], []).append(r)
    plain = clean_metrics(manifest["plain"], lines_of)
    text = text_metrics(manifest["text"], lines_of)
    return {
        "codes": len(rows), "codes_without_unique_needle": sum(p["needle"] is None for p in manifest["text"]),
        "text_rank1_share": rnd(sum(r["rank"] == 1 for r in big) / len(big)) if big else None,
        "text_rank1_share_all": rnd(sum(r["rank"] == 1 for r in rows) / len(rows)) if rows else None,
        "text_found_share_all": rnd(sum(r["rank"] is not None for r in rows) / len(rows)) if rows else None,
        "rank1_by_height": {f"{lo}-{hi}": rnd(sum(r["rank"] == 1 for r in by_bucket[f"{lo}-{hi}"]) / len(by_bucket[f"{lo}-{hi}"]))
                            for lo, hi in BUCKETS if by_bucket.get(f"{lo}-{hi}")},
        "searches_s": rnd(search_s / max(1, len(rows))),
        "not_first": [r for r in rows if r["rank"] != 1],
        "index_ocr_wall_s": rnd(run["wall_s"], 1), "index_summary": run["summary"], "text_counts": counts,
        "stored_no_text_clean_share": plain["no_text_clean_share"], "stored_plain_with_text": plain["with_text"],
        "stored_word_recall_by_height": text["word_recall_by_height"], "stored_word_recall_20plus": text["word_recall_20plus"],
    }


def throughput(args: argparse.Namespace, work: Path, cache: Path) -> dict[str, Any]:
    log(f"12-MP load: {args.n_big} JPEGs (cache {args.big_cache}; slow the first time) ...")
    manifest = make_big(args.n_big, work, args.big_cache, args.seed)
    folder = Path(manifest["folder"]) / "photos"
    for p in folder.iterdir():  # the page cache: both runs read from memory
        p.read_bytes()
    log("  retriever index (no OCR) ...")
    plain = run_index(folder, work / "home-big", cache, ocr=False)
    log(f"  {plain['wall_s']:.1f} s; retriever index --ocr ...")
    ocr = run_index(folder, work / "home-big-ocr", cache, ocr=True)
    log(f"  {ocr['wall_s']:.1f} s")
    stored, counts = stored_lines(work / "home-big-ocr")
    photos = manifest["photos"]
    lines_of = {p["path"]: stored.get(str(Path(p["path"]).resolve()), []) for p in photos}
    text_photos = [p for p in photos if p["items"]]
    plain_photos = [{**p, "source": "caltech101-test (12 MP)"} for p in photos if not p["items"]]
    t = text_metrics(text_photos, lines_of, BIG_BUCKETS)
    n = len(photos)
    return {
        "photos": n, "with_text": len(text_photos), "about": manifest["about"],
        "index_s": rnd(plain["wall_s"], 2), "index_ocr_s": rnd(ocr["wall_s"], 2),
        "index_photos_per_s": rnd(n / plain["wall_s"], 2), "index_ocr_photos_per_s": rnd(n / ocr["wall_s"], 2),
        "ocr_slowdown": rnd(ocr["wall_s"] / plain["wall_s"], 2),
        "index_summary": plain["summary"], "index_ocr_summary": ocr["summary"], "text_counts": counts,
        "word_recall": t["word_recall"], "word_recall_by_height": t["word_recall_by_height"],
        "n_by_height": t["n_by_height"], "missed": t["missed_20plus"],
        "no_text_clean_share": clean_metrics(plain_photos, lines_of)["no_text_clean_share"],
        "plain_with_text": clean_metrics(plain_photos, lines_of)["with_text"],
    }


# -- the runs ----------------------------------------------------------------------------------------


def diagnose(manifest: dict[str, Any], page: str, missed: list[dict[str, Any]]) -> dict[str, Any]:
    """Why the reader missed what it missed: each missed item >= 20 px read again at min_score 0
    (the lines over it, with their confidences), and its surroundings (the item's box widened by
    twice its height each side) cut out and read alone; data.page() at min_score 0."""
    from retriever.ocr import reader as R

    reader = R.OcrReader(min_score=0.0)
    out = []
    wanted = {(m["photo"], m["text"]) for m in missed}
    for p in manifest["text"]:
        image, lines = None, None
        for it in p["items"]:
            if (Path(p["path"]).name, it["text"]) not in wanted:
                continue
            if lines is None:
                image = open_rgb(Path(p["path"]))
                lines = [[ln.text, round(ln.score, 3), list(ln.box)] for ln in reader.read(image)]
            pad = 2 * it["height"]
            x0, y0, x1, y1 = it["box"]
            crop = image.crop((max(0, int(x0 - pad)), max(0, int(y0 - pad)), min(image.width, int(x1 + pad)),
                               min(image.height, int(y1 + pad))))
            out.append({"photo": Path(p["path"]).name, "text": it["text"], "height": it["height"],
                        "any_score": [[ln[0], ln[1]] for ln in lines if overlaps(ln[2], it["box"])],
                        "crop_alone": [[ln.text, round(ln.score, 3)] for ln in reader.read(crop)]})
    page_lines = [[ln.text, round(ln.score, 3)] for ln in reader.read(open_rgb(Path(page)))]
    return {"missed_diagnosis": out, "page_min_score_0": page_lines}


def engines_of(args: argparse.Namespace) -> list[str]:
    if args.engine == "both":
        return ["rapidocr", "tesseract"]
    return [args.engine]


def extras(work: Path) -> dict[str, Any]:
    """examples/photos, data.page(), data.text() (saved as PNG files in work/extras)."""
    from PIL import Image
    from skimage import data

    folder = work / "extras"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.page()).save(folder / "page.png")
    Image.fromarray(data.text()).save(folder / "text.png")
    examples = sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp"))
    return {"folder": folder, "page": str(folder / "page.png"), "text": str(folder / "text.png"), "examples": examples}


def report(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_start = loadavg()
    t_start = time.perf_counter()
    from retriever.ocr import reader as R

    manifest = make_split("report", args.n_text, args.n_plain, work, args.seed)
    ex = extras(work)
    photos = [p["path"] for p in manifest["text"] + manifest["plain"]]
    all_paths = photos + ex["examples"] + [ex["page"], ex["text"]]
    split = Path(manifest["folder"]).name
    engines: dict[str, Any] = {}
    for engine in engines_of(args):
        log(f"{engine}: reading {len(all_paths)} photos ...")
        if engine == "rapidocr":
            raw, reused = cached_reads(args, work, f"{split}-rapidocr-{reader_fingerprint()}",
                                       lambda: read_rapidocr(all_paths))
            lines_of = {p: raw[p]["lines"] for p in all_paths}
            setting = {"det_side": R.DET_SIDE, "min_score": R.MIN_SCORE, "min_chars": R.MIN_CHARS,
                       "upscale_max": R.UPSCALE_MAX, "version": R.engine_version(), "threads": reader_threads()}
        else:
            version = tesseract_version()
            key = hashlib.blake2b(f"{version} {args.tess_thresholding}".encode(), digest_size=5).hexdigest()
            raw, reused = cached_reads(args, work, f"{split}-tesseract-{key}",
                                       lambda: read_tesseract(all_paths, thresholding=args.tess_thresholding))
            lines_of = {p: tesseract_lines(raw[p]["words"], TESS_MIN_CONF) for p in all_paths}
            setting = {"psm": 11, "min_conf": TESS_MIN_CONF, "thresholding_method": args.tess_thresholding,
                       "version": version}
        m = evaluate(manifest, lines_of)
        engines[engine] = {
            **setting, **m, "reads_reused_from": reused,
            "seconds_per_photo": seconds_stats(raw, photos)["mean"], "seconds": seconds_stats(raw, photos),
            "seconds_text_photos": seconds_stats(raw, [p["path"] for p in manifest["text"]])["mean"],
            "seconds_plain_photos": seconds_stats(raw, [p["path"] for p in manifest["plain"]])["mean"],
            "page": page_metrics(lines_of[ex["page"]]), "text_image_lines": [ln[0] for ln in lines_of[ex["text"]]],
            "examples": {Path(p).name: [ln[0] for ln in lines_of[p]] for p in ex["examples"]},
        }
        if engine == "rapidocr":
            engines[engine].update(diagnose(manifest, ex["page"], m["missed_20plus"]))
        log(f"  {engine}: recall >= 20 px {m['word_recall_20plus']}, text-free clean {m['no_text_clean_share']}")

    index_part: dict[str, Any] | None = None
    big: dict[str, Any] | None = None
    index_note = None
    if args.skip_index:
        index_note = "--skip-index"
    elif not has_ocr_cli():
        index_note = "needs `retriever ocr` (the CLI has no ocr command yet): --text and throughput not measured"
        log(index_note)
    else:
        cache = work / "model-cache"
        log("preparing the model cache (a 4-photo index with --ocr) ...")
        prepare_cache(work, cache)
        index_part = text_search(manifest, work, cache)
        big = throughput(args, work, cache)

    main_engine = "rapidocr" if "rapidocr" in engines else engines_of(args)[0]
    e = engines[main_engine]
    load_end = loadavg()
    result = {
        "benchmark": "ocr", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "engine": main_engine, "det_side": e.get("det_side"), "min_score": e.get("min_score"),
        "photos_with_text": len(manifest["text"]), "photos_without_text": len(manifest["plain"]),
        "items": e["items"], "items_left_out": manifest.get("dropped"),
        "word_recall_by_height": e["word_recall_by_height"], "cer_by_height": e["cer_by_height"],
        "word_recall_20plus": e["word_recall_20plus"], "word_recall": e["word_recall"],
        "no_text_clean_share": e["no_text_clean_share"],
        "no_text_clean_share_verified": e.get("no_text_clean_share_verified"),
        "verified_text_free": e.get("verified_text_free"), "seconds_per_photo": e["seconds_per_photo"],
        "text_rank1_share": index_part["text_rank1_share"] if index_part else None,
        "index_s": big["index_s"] if big else None, "index_ocr_s": big["index_ocr_s"] if big else None,
        "ocr_slowdown": big["ocr_slowdown"] if big else None,
        "index_photos_per_s": big["index_photos_per_s"] if big else None,
        "index_ocr_photos_per_s": big["index_ocr_photos_per_s"] if big else None,
        "big_word_recall": big["word_recall"] if big else None,
        "index_note": index_note,
        "engines": engines, "text_search": index_part, "throughput": big,
        "load_avg": load_start, "load_avg_end": load_end, "cpu": cpu_name(), "cores": os.cpu_count(),
        "wall_s": rnd(time.perf_counter() - t_start, 1), "work": str(work),
    }
    targets = {"recall_20plus": (e["word_recall_20plus"], ">="),
               "no_text_clean_share": (e.get("no_text_clean_share_verified"), ">="),
               "text_rank1_share": (result["text_rank1_share"], ">="), "ocr_slowdown": (result["ocr_slowdown"], "<=")}
    result["targets"] = {k: {"value": v, "limit": TARGETS[k], "op": op,
                             "pass": None if v is None else (v >= TARGETS[k] if op == ">=" else v <= TARGETS[k])}
                         for k, (v, op) in targets.items()}
    return result


def fit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_start = loadavg()
    t_start = time.perf_counter()
    from retriever.ocr import reader as R

    manifest = make_split("fit", args.n_text, args.n_plain, work, args.seed)
    photos = [p["path"] for p in manifest["text"] + manifest["plain"]]
    out: dict[str, Any] = {"benchmark": "ocr-fit", "split": "caltech101-train + distractors-tune",
                           "photos_with_text": len(manifest["text"]), "photos_without_text": len(manifest["plain"]),
                           "library": {"det_side": R.DET_SIDE, "min_score": R.MIN_SCORE, "threads": reader_threads()}}
    if "rapidocr" in engines_of(args):
        raw, reused = {}, {}
        split = Path(manifest["folder"]).name
        for side in DET_SIDES:
            log(f"rapidocr det_side {side}, min_score 0: reading {len(photos)} photos ...")
            raw[side], reused[side] = cached_reads(
                args, work, f"{split}-rapidocr-det{side}-min0-{reader_fingerprint()}",
                lambda side=side: read_rapidocr(photos, det_side=side, min_score=0.0, what=f" det{side}"))
        base = raw[R.DET_SIDE] if R.DET_SIDE in raw else raw[DET_SIDES[1]]
        sweep = []
        for t in MIN_SCORES:
            m = evaluate(manifest, {p: filtered(base[p]["lines"], t) for p in photos})
            sweep.append({"min_score": t, "word_recall": m["word_recall"], "word_recall_20plus": m["word_recall_20plus"],
                          "word_recall_by_height": m["word_recall_by_height"],
                          "no_text_clean_share": m["no_text_clean_share"],
                          "no_text_clean_share_caltech": m["no_text_clean_share_caltech"],
                          "no_text_clean_share_distractors": m["no_text_clean_share_distractors"]})
        best_recall = max(r["word_recall"] for r in sweep)
        ok = [r for r in sweep if r["word_recall"] >= best_recall - FIT_RECALL_LOSS]
        chosen = max(ok, key=lambda r: (r["no_text_clean_share"], -r["min_score"]))
        sides = []
        for side in DET_SIDES:
            m = evaluate(manifest, {p: filtered(raw[side][p]["lines"], chosen["min_score"]) for p in photos})
            sides.append({"det_side": side, "word_recall": m["word_recall"], "word_recall_20plus": m["word_recall_20plus"],
                          "word_recall_by_height": m["word_recall_by_height"], "cer_by_height": m["cer_by_height"],
                          "no_text_clean_share": m["no_text_clean_share"],
                          "seconds_per_photo": seconds_stats(raw[side], photos)["mean"],
                          "seconds_text_photos": seconds_stats(raw[side], [p["path"] for p in manifest["text"]])["mean"],
                          "seconds_plain_photos": seconds_stats(raw[side], [p["path"] for p in manifest["plain"]])["mean"]})
        best_side = max(s["word_recall"] for s in sides)
        suggested = min((s for s in sides if s["word_recall"] >= best_side - FIT_RECALL_LOSS), key=lambda s: s["det_side"])
        plain_lines, dropped = {}, {}
        lo, hi = sorted((PERMISSIVE_MIN_SCORE, chosen["min_score"]))
        for p in manifest["plain"]:
            got = filtered(base[p["path"]]["lines"], chosen["min_score"])
            if got:
                plain_lines[Path(p["path"]).name] = [[ln[0], ln[1]] for ln in got]
            between = [[ln[0], ln[1]] for ln in base[p["path"]]["lines"] if lo <= ln[1] < hi]
            if between:
                dropped[Path(p["path"]).name] = between
        items_between = []
        for p in manifest["text"]:
            at_lo, at_hi = filtered(base[p["path"]]["lines"], lo), filtered(base[p["path"]]["lines"], hi)
            for it in p["items"]:
                if item_result(it, at_lo)[0] != item_result(it, at_hi)[0]:
                    items_between.append([Path(p["path"]).name, it["text"], it["height"], it["style"], it["angle"]])
        out["rapidocr"] = {"min_score_sweep": sweep, "min_score": chosen["min_score"],
                           "rule": f"highest text-free share among thresholds whose recall of all items is within "
                                   f"{FIT_RECALL_LOSS} of the best threshold's; a tie: the lower threshold; at det_side "
                                   f"{R.DET_SIDE}",
                           "det_sides": sides, "det_side": suggested["det_side"],
                           "det_side_rule": f"smallest det_side whose recall of all items is within {FIT_RECALL_LOSS} "
                                            "of the best det_side's (at the chosen min_score)",
                           "plain_lines_at_min_score": plain_lines,
                           "between": {"scores": [lo, hi], "plain_lines": dropped, "items": items_between},
                           "reads_reused_from": reused}
    if "tesseract" in engines_of(args):
        log(f"tesseract: reading {len(photos)} photos ...")
        key = hashlib.blake2b(f"{tesseract_version()} {args.tess_thresholding}".encode(), digest_size=5).hexdigest()
        raw_t, reused_t = cached_reads(args, work, f"{Path(manifest['folder']).name}-tesseract-{key}",
                                       lambda: read_tesseract(photos, thresholding=args.tess_thresholding))
        sweep = []
        for c in TESS_CONFS:
            m = evaluate(manifest, {p: tesseract_lines(raw_t[p]["words"], c) for p in photos})
            sweep.append({"min_conf": c, "word_recall": m["word_recall"], "word_recall_20plus": m["word_recall_20plus"],
                          "word_recall_by_height": m["word_recall_by_height"],
                          "no_text_clean_share": m["no_text_clean_share"]})
        best_recall = max(r["word_recall"] for r in sweep)
        ok = [r for r in sweep if r["word_recall"] >= best_recall - FIT_RECALL_LOSS]
        chosen_t = max(ok, key=lambda r: (r["no_text_clean_share"], -r["min_conf"]))
        out["tesseract"] = {"min_conf_sweep": sweep, "min_conf": chosen_t["min_conf"], "reads_reused_from": reused_t,
                            "thresholding_method": args.tess_thresholding,
                            "seconds_per_photo": seconds_stats(raw_t, photos)["mean"]}
    out.update(load_avg=load_start, load_avg_end=loadavg(), cpu=cpu_name(), cores=os.cpu_count(),
               date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               wall_s=rnd(time.perf_counter() - t_start, 1))
    return out


# -- output ----------------------------------------------------------------------------------------


def f3(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def report_table(r: dict[str, Any]) -> str:
    names = [f"{lo}-{hi}" for lo, hi in BUCKETS]
    lines = [(f"ocr, {r['date']}: {r['photos_with_text']} photos with {r['items']} rendered items + "
              f"{r['photos_without_text']} without text (caltech101-test + distractors-test, long side "
              f"{LONG_SIDE[0]}-{LONG_SIDE[1]}); {r['cores']} cores ({r['cpu']}), load average {r['load_avg']} at the "
              f"start, {r['load_avg_end']} at the end; {r['wall_s']:.0f} s in all"), ""]
    head = "| engine | " + " | ".join(f"recall {n} px" for n in names) + " | recall >= 20 px | " + \
           " | ".join(f"CER {n}" for n in names) + " | text-free clean (Caltech / distractors) | " + \
           "clean, photos without any text | s/photo (text / none) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in r["engines"].items():
        label = (f"rapidocr det{e['det_side']} min_score {e['min_score']} threads {e['threads']}" if name == "rapidocr"
                 else f"tesseract psm 11 thresholding {e['thresholding_method']} conf >= {e['min_conf']}")
        if e.get("reads_reused_from"):
            label += f" (reads of {e['reads_reused_from']})"
        n_by = e["n_by_height"]
        lines.append(f"| {label} | " + " | ".join(f"{f3(e['word_recall_by_height'].get(n))} ({n_by.get(n, 0)})"
                                                 for n in names)
                     + f" | {f3(e['word_recall_20plus'])} | " + " | ".join(f3(e["cer_by_height"].get(n)) for n in names)
                     + f" | {f3(e['no_text_clean_share'])} ({f3(e['no_text_clean_share_caltech'])} / "
                       f"{f3(e['no_text_clean_share_distractors'])}) | {f3(e.get('no_text_clean_share_verified'))} "
                       f"({e.get('verified_text_free')}) | {e['seconds_per_photo']:.2f} "
                       f"({e['seconds_text_photos']:.2f} / {e['seconds_plain_photos']:.2f}) |")
    for name, e in r["engines"].items():
        lines += ["", f"{name}: recall by style, all heights / >= 20 px: " + ", ".join(
            f"{k} {v['recall']:.2f} / {e['by_style_20plus'].get(k, {}).get('recall', float('nan')):.2f}"
            for k, v in e["by_style"].items()),
                  f"{name}: recall by rotation: " + ", ".join(f"{k} deg {v['recall']:.2f} ({v['n']})"
                                                          for k, v in e["by_angle"].items())
                  + "; by JPEG quality: " + ", ".join(f"{k} {v['recall']:.2f}" for k, v in e["by_quality"].items())
                  + "; by kind: " + ", ".join(f"{k} {v['recall']:.2f}" for k, v in e["by_kind"].items()),
                  f"{name}: recall by font: " + ", ".join(f"{k} {v['recall']:.2f}" for k, v in e["by_font"].items())]
        missed = e["missed_20plus"]
        lines.append(f"{name}: {len(missed)} items >= 20 px missed" + (":" if missed else ""))
        for m in missed[:25]:
            lines.append(f"    {m['text']!r:18} {m['height']:>4} px {m['style']:12} {m['angle']:>6.1f} deg "
                         f"{m['font']:28} q{m['quality']}  read nearby: {m['near']!r}")
        if e.get("missed_diagnosis"):
            lines.append(f"{name}: the same items read again at min_score 0 (the lines over each, with their "
                         "confidence), and cut out with a margin of twice their height and read alone:")
            for d in e["missed_diagnosis"]:
                lines.append(f"    {d['text']!r:18} {d['height']:>4} px  over it: {d['any_score']}  alone: "
                             f"{d['crop_alone']}"[:300])
        if len(missed) > 25:
            lines.append(f"    ... {len(missed) - 25} more in the JSON")
        lines.append(f"{name}: text found on {len(e['with_text'])} of the {e['photos']} photos without rendered text:")
        for w in e["with_text"]:
            lines.append(f"    {w['photo']} ({w['source']}): {w['lines']}")
        pg = e["page"]
        lines.append(f"{name}: data.page(): {pg['word_recall']:.3f} of its {pg['words']} words (4+ characters), "
                     f"page CER {pg['page_cer']:.3f}; lines: {pg['lines']}")
        if e.get("page_min_score_0"):
            lines.append(f"{name}: data.page() at min_score 0: {e['page_min_score_0']}")
        lines.append(f"{name}: data.text() (handwritten maths): {e['text_image_lines']}")
        found = {k: v for k, v in e["examples"].items() if v}
        lines.append(f"{name}: examples/photos with text: {found if found else 'none'}")
    ts, big = r["text_search"], r["throughput"]
    lines.append("")
    if r["index_note"]:
        lines.append(f"--text search and throughput: not measured ({r['index_note']})")
    if ts:
        lines += [f"--text search ({ts['codes']} codes, a 4-character substring unique in the set each; index "
                  f"--ocr of the {r['photos_with_text']} + {r['photos_without_text']} photos: "
                  f"{ts['index_ocr_wall_s']} s): code's photo first for {f3(ts['text_rank1_share'])} of the codes "
                  f">= 20 px, {f3(ts['text_rank1_share_all'])} of all (by height: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ts["rank1_by_height"].items())
                  + f"); found at all {f3(ts['text_found_share_all'])}; {ts['searches_s']} s a search",
                  (f"  the index's stored text: recall >= 20 px {f3(ts['stored_word_recall_20plus'])}, text-free "
                   f"clean {f3(ts['stored_no_text_clean_share'])}")]
        for nf in ts["not_first"][:20]:
            lines.append(f"    not first: {nf['code']!r} ({nf['height']} px) --text {nf['needle']}: rank {nf['rank']}, "
                         f"{nf['results']} results, first {nf['first']}")
    if big:
        lines += ["", (f"throughput: {big['photos']} 12-MP JPEGs ({big['with_text']} with text), offline encoder, "
                       "fresh home each, one run each"), "",
                  "| run | wall s | photos/s |", "|---|---|---|",
                  f"| retriever index | {big['index_s']:.1f} | {big['index_photos_per_s']:.2f} |",
                  f"| retriever index --ocr | {big['index_ocr_s']:.1f} | {big['index_ocr_photos_per_s']:.2f} |",
                  "", (f"ocr_slowdown {big['ocr_slowdown']:.2f}x; 12-MP text photos: word recall "
                       f"{f3(big['word_recall'])} (by height: ") + ", ".join(
                          f"{k} {v:.2f} ({big['n_by_height'][k]})" for k, v in big["word_recall_by_height"].items())
                  + f"); text-free 12-MP photos clean {f3(big['no_text_clean_share'])}"]
        for m in big["missed"]:
            lines.append(f"    missed: {m['text']!r} {m['height']} px {m['style']} {m['angle']} deg, read nearby {m['near']!r}")
    lines += ["", "| target | value | limit | |", "|---|---|---|---|"]
    for k, t in r["targets"].items():
        verdict = "-" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"| {k} | {f3(t['value'])} | {t['op']} {t['limit']} | {verdict} |")
    return "\n".join(lines)


def fit_table(r: dict[str, Any]) -> str:
    names = [f"{lo}-{hi}" for lo, hi in BUCKETS]
    lines = [(f"ocr --fit, {r['date']}: {r['photos_with_text']} photos with text + {r['photos_without_text']} "
              f"without ({r['split']}); library now: {r['library']}; load average {r['load_avg']} at the start, "
              f"{r['load_avg_end']} at the end; {r['wall_s']:.0f} s")]
    if "rapidocr" in r:
        f = r["rapidocr"]
        lines += ["", f"rapidocr MIN_SCORE sweep at det_side {r['library']['det_side']}:", "",
                  "| min_score | recall all | recall >= 20 px | " + " | ".join(names)
                  + " | text-free clean | of them Caltech | of them distractors |",
                  "|---|---|---|" + "---|" * len(names) + "---|---|---|"]
        for s in f["min_score_sweep"]:
            mark = " **chosen**" if s["min_score"] == f["min_score"] else ""
            lines.append(f"| {s['min_score']}{mark} | {f3(s['word_recall'])} | {f3(s['word_recall_20plus'])} | "
                         + " | ".join(f3(s["word_recall_by_height"].get(n)) for n in names)
                         + f" | {f3(s['no_text_clean_share'])} | {f3(s['no_text_clean_share_caltech'])} "
                           f"| {f3(s['no_text_clean_share_distractors'])} |")
        lines += ["", f"rule: {f['rule']}", "", f"det_side at min_score {f['min_score']}:", "",
                  "| det_side | recall all | recall >= 20 px | " + " | ".join(names) + " | text-free clean | s/photo "
                  "(text / none) |", "|---|---|---|" + "---|" * len(names) + "---|---|"]
        for s in f["det_sides"]:
            mark = " **suggested**" if s["det_side"] == f["det_side"] else ""
            lines.append(f"| {s['det_side']}{mark} | {f3(s['word_recall'])} | {f3(s['word_recall_20plus'])} | "
                         + " | ".join(f3(s["word_recall_by_height"].get(n)) for n in names)
                         + f" | {f3(s['no_text_clean_share'])} | {s['seconds_per_photo']:.2f} "
                           f"({s['seconds_text_photos']:.2f} / {s['seconds_plain_photos']:.2f}) |")
        lines += ["", f"det_side rule: {f['det_side_rule']}",
                  f"FITTED: MIN_SCORE = {f['min_score']}, DET_SIDE = {f['det_side']}",
                  f"text-free photos with lines at min_score {f['min_score']} (det_side {r['library']['det_side']}):"]
        for name, ls in f["plain_lines_at_min_score"].items():
            lines.append(f"    {name}: {ls}"[:400])
        b = f["between"]
        lines.append(f"lines on text-free photos with a confidence in [{b['scores'][0]}, {b['scores'][1]}) (what the "
                     f"chosen threshold drops against a permissive {PERMISSIVE_MIN_SCORE}): {len(b['plain_lines'])} photos")
        for name, ls in b["plain_lines"].items():
            lines.append(f"    {name}: {ls}"[:400])
        lines.append(f"rendered items read at one of the two thresholds only: {b['items']}")
    if "tesseract" in r:
        t = r["tesseract"]
        lines += ["", (f"tesseract --psm 11 -c thresholding_method={t['thresholding_method']} "
                       f"({t['seconds_per_photo']:.2f} s a photo), word confidence sweep:"), "",
                  "| min_conf | recall all | recall >= 20 px | " + " | ".join(names) + " | text-free clean |",
                  "|---|---|---|" + "---|" * len(names) + "---|"]
        for s in t["min_conf_sweep"]:
            mark = " **chosen**" if s["min_conf"] == t["min_conf"] else ""
            lines.append(f"| {s['min_conf']}{mark} | {f3(s['word_recall'])} | {f3(s['word_recall_20plus'])} | "
                         + " | ".join(f3(s["word_recall_by_height"].get(n)) for n in names)
                         + f" | {f3(s['no_text_clean_share'])} |")
        lines.append(f"FITTED: TESS_MIN_CONF = {t['min_conf']} (same rule)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="fit MIN_SCORE and compare det_side on train + tune")
    ap.add_argument("--n-text", type=int, default=150, help="photos with rendered text per split")
    ap.add_argument("--n-plain", type=int, default=150, help="photos without rendered text per split")
    ap.add_argument("--n-big", type=int, default=100, help="12-MP JPEGs of the throughput load (one in ten with text)")
    ap.add_argument("--engine", choices=("rapidocr", "tesseract", "both"), default=None,
                    help="both (the default when the tesseract binary is there), else rapidocr")
    ap.add_argument("--work", type=Path, default=None, help="keep the generated photos and homes here (reused)")
    ap.add_argument("--big-cache", type=Path, default=Path("/tmp/rb-cache"),
                    help="where the 12-MP photos are kept (shared with index_rclip.py)")
    ap.add_argument("--skip-index", action="store_true", help="reader metrics only: no --text search, no throughput")
    ap.add_argument("--json-only", action="store_true", help="print the JSON line only")
    ap.add_argument("--reread", action="store_true",
                    help="read every photo again even if --work holds reads by the same reader and settings")
    ap.add_argument("--tess-thresholding", type=int, choices=(0, 1, 2), default=TESS_THRESHOLDING,
                    help="tesseract -c thresholding_method=N (0 Otsu, its default; 2 Sauvola)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.engine is None:
        args.engine = "both" if shutil.which("tesseract") else "rapidocr"
    if args.engine in ("tesseract", "both") and not shutil.which("tesseract"):
        ap.error("no tesseract binary: apt-get install tesseract-ocr tesseract-ocr-eng")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="retriever-ocr-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = fit(args, work) if args.fit else report(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    if not args.json_only:
        print()
        print(fit_table(result) if args.fit else report_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
