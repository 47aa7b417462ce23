"""Region search: a few vectors per photo for the parts of it, so that a query finds the small
thing in a wide shot, and says where it is.

Regions are square boxes on grids over the photo's own aspect ratio: level n puts n boxes of side
SIDES[n] x the short side along the short side and round(n x long / short) along the long side,
spread evenly from edge to edge (so they overlap). Two ways to give them vectors, measured
against each other in benchmarks/regions.py (offline encoder, train split):
- dense (DENSE, the offline encoder's): one pass over the whole photo at DENSE_SHORT_SIDE pixels,
  each box's vector pooled from the CNN's feature maps (OfflineEncoder.embed_regions, or the
  same on ONNX Runtime: the index export's regions tower, retriever.onnx.OnnxRegions, used on
  the CPU when the export has it); boxes snap to the feature cells. t2i R@10 on pasted objects
  0.446, i2i 0.861, 27 s for 348 photos in PyTorch (v1); v2 on ONNX Runtime: 0.436, 15.6 s.
- crops (CROPS, every other encoder): each box cut out and encoded, one pass of the index's own
  encoder per box (PyTorch or ONNX Runtime). t2i R@10 0.455, i2i 0.970, 56 s for the same photos.
A region whose vector is nearly the whole photo's (cosine >= SAME_AS_WHOLE) adds nothing and is
not kept. Boxes are in the photo's own pixels after EXIF orientation, whatever size it was
decoded at.

Region vectors are kept in the catalog (float16, retriever/store/regions.py: crash-safe, per
photo, dropped with the content they came from, kept by a moved file) and searched through their
own FAISS file beside the photo index (`regions.faiss`, ids image_id * MAX_REGIONS + j), rebuilt
from the catalog whenever the catalog's region version moved on.

A query scores a photo by max(whole, best region - margin): one hit per photo, with the
box of the region when a region won (the whole photo otherwise).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from retriever.errors import RetrieverError
from retriever.progress import Progress

SCHEME_VERSION = 2  # 2: the dense pass's input is a multiple of 32 px on both sides (one ONNX graph for any size)
SIDES = {2: 0.6, 3: 0.45}  # crop side per grid level, as a share of the photo's short side
SAME_AS_WHOLE = 0.97  # a region this close to the whole photo's vector is not kept


@dataclass(frozen=True)
class Scheme:
    """How regions are made and weighed. levels: the grid levels kept; margin: a region's score
    is lowered by this before it competes with the whole photo. Both fitted on train + tune
    (benchmarks/regions.py --fit): without a margin regions win too often on object-centred
    photos (whole-photo mAP on Caltech -0.026 with crops)."""
    dense: bool  # one pass over the photo (the encoder's embed_regions), else one pass per crop
    levels: tuple[int, ...]
    margin: float


CROPS = Scheme(dense=False, levels=(2, 3), margin=0.02)
DENSE = Scheme(dense=True, levels=(3,), margin=0.0)  # v2 fit: the 2x2 windows added nothing on train, no margin needed


def scheme_for(dense: bool) -> Scheme:
    return DENSE if dense else CROPS


MAX_REGIONS = 64  # per photo: FAISS ids are image_id * MAX_REGIONS + j
MIN_CROP_SIDE = 32  # pixels of the photo: smaller photos get no regions
DENSE_SHORT_SIDE = 448  # the offline encoder's one pass: the photo's short side (14 feature cells)
DECODE_MIN_SIDE = 640  # JPEGs decoded at reduced scale while both sides keep this many pixels
REGIONS_FILE = "regions.faiss"
REGIONS_LOCK_FILE = "regions.lock"
BATCH = 16  # photos per committed batch


class RegionError(RetrieverError):
    """Region vectors could not be made or read."""


def scheme_name(levels: Sequence[int], dense: bool) -> str:
    """What the stored regions were made with: crops or one dense pass, grids, sides and the keep
    rule (another scheme encodes again)."""
    grids = "+".join(f"{n}@{SIDES[n]:g}" for n in levels)
    how = f"dense{DENSE_SHORT_SIDE}" if dense else "crops"
    return f"{how} grid{grids} keep<{SAME_AS_WHOLE:g}/v{SCHEME_VERSION}"


def is_dense(encoder) -> bool:
    """Whether an encoder makes region vectors in one pass over the photo (embed_regions)."""
    return hasattr(encoder, "embed_regions")


def region_boxes(width: int, height: int, levels: Sequence[int] = CROPS.levels
                 ) -> list[tuple[float, float, float, float]]:
    """The crops of a width x height photo, (x0, y0, x1, y1) in its pixels, level after level."""
    short, long_ = min(width, height), max(width, height)
    boxes: list[tuple[float, float, float, float]] = []
    for n in levels:
        side = SIDES[n] * short
        if side < MIN_CROP_SIDE:
            continue
        along_long = max(n, round(n * long_ / short))
        nx, ny = (along_long, n) if width >= height else (n, along_long)
        for j in range(ny):
            y0 = 0.0 if ny == 1 else (height - side) * j / (ny - 1)
            for i in range(nx):
                x0 = 0.0 if nx == 1 else (width - side) * i / (nx - 1)
                boxes.append((round(x0, 1), round(y0, 1), round(x0 + side, 1), round(y0 + side, 1)))
    return boxes[:MAX_REGIONS]


def crops(image, boxes: Sequence[tuple[float, float, float, float]], full_size: tuple[int, int]) -> list:
    """PIL crops of `image` (possibly a reduced decode of a full_size photo) for boxes given in
    the photo's pixels."""
    sx, sy = image.size[0] / full_size[0], image.size[1] / full_size[1]
    return [image.crop((round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))) for x0, y0, x1, y1 in boxes]


def keep_regions(whole: np.ndarray | None, vectors: np.ndarray) -> np.ndarray:
    """Indices of the regions worth keeping: those not nearly the whole photo."""
    if whole is None or len(vectors) == 0:
        return np.arange(len(vectors))
    return np.flatnonzero(vectors @ np.asarray(whole, np.float32) < SAME_AS_WHOLE)


@dataclass
class RegionSummary:
    photos: int = 0  # photos whose regions were encoded and written this run
    regions: int = 0  # region vectors written
    failed: int = 0
    pending: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    scheme: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"photos": self.photos, "regions": self.regions, "failed": self.failed, "pending": self.pending,
                "seconds": round(self.seconds, 3),
                "regions_per_photo": round(self.regions / self.photos, 2) if self.photos else None,
                "interrupted": self.interrupted, "scheme": self.scheme}


def run_regions(index, encoder, *, limit: int | None = None, workers: int = 0, dense: bool | None = None,
                levels: Sequence[int] | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> RegionSummary:
    """Encode the regions of the indexed photos that have none yet (or were edited since, or were
    made by another scheme), one committed batch at a time: Ctrl-C or a kill loses at most the
    batch in progress, and running again resumes. `encoder`: the index's encoder, or a callable
    returning it (called only when something needs encoding). dense: one pass over each photo
    (an encoder with embed_regions) instead of crops; None: dense when `encoder` can. Holds the
    index's region lock. levels: the grid levels (None: the scheme's fitted ones)."""
    from retriever.decode_pool import default_workers
    from retriever.store.catalog import utcnow
    from retriever.store.regions import pending_region_rows, write_regions

    if dense is None:
        dense = is_dense(encoder)
    levels = tuple(levels or scheme_for(dense).levels)
    summary = RegionSummary(scheme=scheme_name(levels, dense))
    started = time.monotonic()
    with regions_lock(index):
        todo = pending_region_rows(index.catalog, summary.scheme, limit=limit)
        summary.pending = len(todo)
        done = 0
        try:
            if todo and not hasattr(encoder, "embed_images"):
                encoder = encoder()
            if todo and dense and not is_dense(encoder):
                raise RegionError(f"{index.model_id}'s encoder cannot make region vectors in one pass")
            pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="retriever-regions")
            try:
                for start in range(0, len(todo), BATCH):
                    batch = todo[start:start + BATCH]
                    rows = _encode_batch(index, encoder, batch, pool, summary, dense, levels)
                    summary.photos += write_regions(index.catalog, rows, summary.scheme, utcnow())
                    summary.regions += sum(len(r[2]) for r in rows)
                    done += len(batch)
                    if on_progress:
                        on_progress(Progress(done, len(todo), summary.failed, time.monotonic() - started,
                                             stage="regions"))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:
            summary.interrupted = True
    if summary.photos and not summary.interrupted:
        region_index_for(index)  # built and saved now: the next search need not
    summary.seconds = time.monotonic() - started
    return summary


def _encode_batch(index, encoder, batch, pool, summary: RegionSummary, dense: bool = False,
                  levels: Sequence[int] = CROPS.levels) -> list[tuple[int, Any, list, np.ndarray]]:
    """Decode the batch's photos (in the pool), cut their crops, encode all crops in one stream;
    dense: one pass over each photo instead (the encoder's embed_regions)."""
    from retriever.images import load

    def cut(row):
        image_id, path, fingerprint = row
        try:
            decoded = load(path, draft_min_side=DECODE_MIN_SIDE)
        except RetrieverError as exc:
            return exc
        size = (int(decoded.meta.get("width") or decoded.image.size[0]),
                int(decoded.meta.get("height") or decoded.image.size[1]))
        boxes = region_boxes(*size, levels)
        return boxes, ((decoded.image, size) if dense else crops(decoded.image, boxes, size))

    cut_rows = []
    for row, result in zip(batch, pool.map(cut, batch)):
        if isinstance(result, RetrieverError):
            summary.failed += 1
            summary.failures.append((row[1], str(getattr(result, "reason", result))))
            continue
        cut_rows.append((row, *result))
    wholes = index.catalog.vectors_for([row[0] for row, _, _ in cut_rows], index.dim)
    if dense:
        out = []
        for row, boxes, (image, size) in cut_rows:
            snapped, these = (encoder.embed_regions(image, boxes, size, short_side=DENSE_SHORT_SIDE) if boxes
                              else ([], np.zeros((0, index.dim), np.float32)))
            kept = keep_regions(wholes.get(row[0]), these)
            out.append((row[0], row[2], [snapped[i] for i in kept], these[kept]))
        return out
    images = [im for _, _, ims in cut_rows for im in ims]
    vectors = encoder.embed_images(images) if images else np.zeros((0, index.dim), np.float32)
    out, at = [], 0
    for row, boxes, ims in cut_rows:
        these = vectors[at:at + len(ims)]
        at += len(ims)
        kept = keep_regions(wholes.get(row[0]), these)
        out.append((row[0], row[2], [list(boxes[i]) for i in kept], these[kept]))
    return out


@contextmanager
def regions_lock(index) -> Iterator[None]:
    """One region run per index at a time."""
    from retriever.durable import run_lock
    from retriever.store.catalog import utcnow

    with run_lock(index.folder / REGIONS_LOCK_FILE, utcnow(),
                  f"another region run is writing to index {index.name!r}"):
        yield


class RegionIndex:
    """The region vectors of an index in one FAISS index (fp16 scalar quantizer: the catalog's
    precision, exact scan), with each region's photo and box."""

    def __init__(self, dim: int, index, keys: np.ndarray, boxes: np.ndarray, version: int,
                 margin: float = CROPS.margin):
        self.dim, self.index, self.keys, self.boxes, self.version = dim, index, keys, boxes, version
        self.margin = margin  # the stored scheme's (a mix of schemes: the crops')

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, catalog, dim: int, version: int) -> "RegionIndex":
        import faiss

        from retriever.store.regions import iter_regions

        index = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                             faiss.METRIC_INNER_PRODUCT))
        keys, boxes = [], []
        for ids, bxs, vecs in iter_regions(catalog, dim):
            j = _positions(ids)
            k = ids * MAX_REGIONS + j
            index.add_with_ids(np.ascontiguousarray(vecs, np.float32), k)
            keys.append(k)
            boxes.append(bxs)
        keys_a = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        boxes_a = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        order = np.argsort(keys_a, kind="stable")
        from retriever.store.regions import region_counts

        schemes = region_counts(catalog)["schemes"]
        dense = bool(schemes) and all(name.startswith("dense") for name in schemes)
        return cls(dim, index, keys_a[order], boxes_a[order], version, scheme_for(dense).margin)

    def save(self, folder: Path) -> None:
        import faiss

        from retriever.vectors import _atomic_write

        path = Path(folder) / REGIONS_FILE
        _atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        meta = path.with_suffix(".boxes.npz")

        def write_meta(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=self.keys, boxes=self.boxes)

        _atomic_write(meta, write_meta)
        _atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(
            {"version": self.version, "count": len(self), "dim": self.dim, "margin": self.margin})))

    @classmethod
    def load(cls, folder: Path, version: int, dim: int) -> "RegionIndex | None":
        """The saved file if it is the one for this version, else None."""
        import faiss

        path = Path(folder) / REGIONS_FILE
        try:
            info = json.loads(path.with_suffix(".json").read_text())
            if info.get("version") != version or info.get("dim") != dim:
                return None
            index = faiss.read_index(str(path))
            with np.load(path.with_suffix(".boxes.npz")) as meta:
                keys, boxes = meta["keys"], meta["boxes"]
        except (OSError, ValueError, RuntimeError, KeyError):
            return None
        if index.ntotal != info.get("count") or len(keys) != index.ntotal or index.d != dim:
            return None
        return cls(dim, index, keys, boxes, version, float(info.get("margin", CROPS.margin)))

    def box_of(self, key: int) -> list[float]:
        at = int(np.searchsorted(self.keys, key))
        return [float(v) for v in self.boxes[at]] if at < len(self.keys) and self.keys[at] == key else []

    def best(self, query: np.ndarray, photos: int, allowed: np.ndarray | None = None,
             exclude: Sequence[int] = ()) -> dict[int, tuple[float, list[float]]]:
        """image_id -> (score of its best region, that region's box) for the `photos` best photos
        by region (fewer when fewer have regions; allowed: sorted photo ids that may appear)."""
        import faiss

        n = len(self)
        if n == 0:
            return {}
        keep: list[Any] = []
        selector = None
        if allowed is not None:
            keys = self.keys[np.isin(self.keys // MAX_REGIONS, allowed)]
            if len(keys) == 0:
                return {}
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(keys, np.int64))
            keep.append(keys)
        depth = min(n, max(photos * 8, 64))
        out: dict[int, tuple[float, list[float]]] = {}
        excluded = {int(i) for i in exclude}
        while True:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores, keys = self.index.search(np.ascontiguousarray(np.atleast_2d(query), np.float32), depth,
                                             params=params)
            out.clear()
            for s, key in zip(scores[0], keys[0]):
                if key < 0:
                    continue
                image_id = int(key) // MAX_REGIONS
                if image_id in excluded or image_id in out:
                    continue
                out[image_id] = (float(s), key)
            if len(out) >= photos or depth >= n:
                break
            depth = min(n, depth * 4)
        top = sorted(out.items(), key=lambda item: -item[1][0])[:photos]
        return {i: (s, self.box_of(int(key))) for i, (s, key) in top}


_BUILD_LOCK = threading.Lock()


def region_index_for(index) -> RegionIndex | None:
    """The index's region FAISS for the catalog's current region version: the saved file when it
    is current, else rebuilt from the catalog (and saved when this process may write). None when
    the index has no regions."""
    from retriever.store.regions import region_counts, region_version

    version = region_version(index.catalog)
    if not version:
        return None
    with _BUILD_LOCK:
        found = RegionIndex.load(index.folder, version, index.dim)
        if found is not None:
            return found
        if region_counts(index.catalog)["regions"] == 0:
            return None
        built = RegionIndex.build(index.catalog, index.dim, version)
        if not getattr(index.catalog, "read_only", False):
            try:
                built.save(index.folder)
            except OSError:
                pass  # a read-only folder only costs the rebuild next time
        return built


def merge(whole: dict[int, float], regions: dict[int, tuple[float, list[float]]], k: int,
          margin: float) -> list[tuple[float, int, list[float] | None]]:
    """The k best photos by max(whole score, best region - margin): (score, id, box or None when
    the whole photo won). `whole` must hold the whole-photo score of every photo in `regions`."""
    scored = []
    for image_id, w in whole.items():
        r = regions.get(image_id)
        if r is not None and r[0] - margin > w:
            scored.append((r[0] - margin, image_id, r[1]))
        else:
            scored.append((w, image_id, None))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return scored[:k]


def _positions(ids: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal ids (an image's regions come together)."""
    if len(ids) == 0:
        return ids
    starts = np.r_[0, np.flatnonzero(np.diff(ids)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    return np.arange(len(ids)) - first


def region_status(index) -> dict[str, Any] | None:
    """{"photos", "regions", "per_photo", "bytes"} for status; None when there are none."""
    from retriever.store.regions import region_counts

    counts = region_counts(index.catalog)
    if not counts["photos"]:
        return None
    return {"photos": counts["photos"], "regions": counts["regions"],
            "per_photo": round(counts["regions"] / counts["photos"], 2), "bytes": counts["bytes"],
            "schemes": counts["schemes"]}
