"""Reading the text in a photo: PP-OCR detection, orientation and recognition models, as ONNX
files inside the `rapidocr` wheel (nothing is downloaded), run on ONNX Runtime.

`OcrReader.read(image)` -> the photo's text lines, each with its text, its confidence, and where
it is: `quad`, the four corners of the (possibly rotated) line, and `box`, the axis-aligned
rectangle around them, both in the photo's own pixels (`full_size`, when the image given is a
reduced decode of a larger photo).

How a photo is read (the choices are measured in benchmarks/ocr.py):
- Detection runs on a copy scaled to DET_SIDE pixels on the long side: reduced for large photos,
  enlarged for small ones (DBNet: it finds dark text on light and light text on dark alike, and
  rotated lines as rotated quadrilaterals).
- Nothing detected: the photo costs only that one detection pass (most photos have no text).
- Each detected line is cut from the image as given, at its full resolution (a perspective warp
  that turns a rotated line upright), turned by 180 degrees where the orientation model says it
  is upside down, and recognised in batches.
- Noise is dropped: lines recognised with a confidence below MIN_SCORE, and lines with fewer
  than MIN_CHARS letters or digits (single stray characters, which texture and foliage produce).

Loading the three ONNX sessions takes about 0.6 s, once per process (kept for the next run: the
daemon, a Python session); one reader serves every photo of a run and may be shared by threads
(an ONNX Runtime session runs concurrently).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

from retriever.errors import MissingDependencyError, RetrieverError

OCR_EXTRA = "pip install 'retriever[ocr]'"
# Detection input: the long side of the reduced copy the detector sees.
DET_SIDE = 960
UPSCALE_MAX = 4.0  # small photos are enlarged for detection at most this much
# Decoding for reading: JPEGs may be decoded at a reduced scale while both sides keep at least
# this many pixels (a 12-MP photo is read from its half-size decode).
DECODE_MIN_SIDE = 1200
MIN_SCORE = 0.95  # recognition confidence below which a line is dropped (fitted: benchmarks/ocr.py --fit)
MIN_CHARS = 2  # letters or digits a line needs to be kept


class OcrError(RetrieverError):
    """The text reader could not be loaded or failed on a photo."""


@dataclass(frozen=True)
class TextLine:
    text: str
    score: float  # recognition confidence, 0..1
    quad: tuple[tuple[float, float], ...]  # 4 corners, clockwise from the line's top left
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 around the quad

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 4),
                "box": [round(v, 1) for v in self.box],
                "quad": [[round(x, 1), round(y, 1)] for x, y in self.quad]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextLine":
        quad = tuple((float(x), float(y)) for x, y in d.get("quad") or ())
        return cls(str(d["text"]), float(d.get("score", 1.0)), quad, tuple(float(v) for v in d["box"]))


def engine_version(det_side: int | None = None, min_score: float | None = None) -> str:
    """Which engine, models and reading settings read the text: stored with each photo's text, so
    that text read otherwise (another rapidocr release, detection size or noise threshold) is
    read again."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("rapidocr")
    except PackageNotFoundError:
        raise MissingDependencyError(f"reading text in photos needs rapidocr: {OCR_EXTRA}") from None
    det_side = DET_SIDE if det_side is None else det_side
    min_score = MIN_SCORE if min_score is None else min_score
    return f"rapidocr {v} PP-OCRv6 small det{det_side} min{min_score:g}/{MIN_CHARS}"


def keeps(text: str, score: float, min_score: float = MIN_SCORE) -> bool:
    """Whether a recognised line is kept (see the module's noise rules)."""
    return score >= min_score and sum(ch.isalnum() for ch in text) >= MIN_CHARS


class OcrReader:
    """Loads the three models on first use (see the module's docstring)."""

    def __init__(self, det_side: int = DET_SIDE, min_score: float = MIN_SCORE, threads: int | None = 1):
        """threads: ONNX Runtime threads per model run; 1 (the default) where several photos are
        read at once, one per core (an indexing run's decode workers, `retriever ocr`'s pool);
        None for ONNX Runtime's default (every core, for one photo at a time)."""
        self.det_side = det_side
        self.threads = threads
        self.min_score = min_score
        self._lock = threading.Lock()
        self._models: tuple[Any, Any, Any] | None = None
        self.version = engine_version(det_side, min_score)

    def __getstate__(self) -> dict[str, Any]:  # to worker processes: settings only, models load there
        return {"det_side": self.det_side, "min_score": self.min_score, "version": self.version,
                "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _models=None)

    def _load(self):
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = _load_models(self.det_side, self.threads)
        return self._models

    def read(self, image, full_size: tuple[int, int] | None = None) -> list[TextLine]:
        """Text lines of `image` (a PIL image or an RGB uint8 array of shape (H, W, 3)), top to
        bottom. `full_size` (width, height): the photo's size when `image` is a reduced decode of
        it; boxes are given in those pixels."""
        import numpy as np

        rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if rgb.ndim == 2:  # grey
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        elif rgb.ndim == 3 and rgb.shape[2] == 4:  # RGBA: the alpha band is not looked at
            rgb = rgb[:, :, :3]
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise OcrError(f"read: expected an RGB uint8 image, got shape {rgb.shape} {rgb.dtype}")
        det, cls, rec = self._load()
        height, width = rgb.shape[:2]
        if min(height, width) < 8:
            return []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        quads = _detect(det, bgr, self.det_side)
        if not quads:
            return []
        crops = [_crop(bgr, q) for q in quads]
        upright = cls(crops).img_list
        txts, scores = _recognise(rec, upright)
        sx = (full_size[0] / width) if full_size else 1.0
        sy = (full_size[1] / height) if full_size else 1.0
        lines = []
        for quad, txt, score in zip(quads, txts, scores):
            txt = " ".join(str(txt).split())
            if not keeps(txt, score, self.min_score):
                continue
            corners = tuple((float(x) * sx, float(y) * sy) for x, y in quad)
            xs, ys = [c[0] for c in corners], [c[1] for c in corners]
            lines.append(TextLine(txt, float(score), corners, (min(xs), min(ys), max(xs), max(ys))))
        return lines


_LOADED: dict[tuple, tuple[Any, Any, Any]] = {}  # (det_side, threads) -> the models, once per process
_LOAD_LOCK = threading.Lock()


def _load_models(det_side: int, threads: int | None):
    """The three models (once per process: every reader and run of the process shares them)."""
    with _LOAD_LOCK:
        if (det_side, threads) not in _LOADED:
            _LOADED[det_side, threads] = _create_models(det_side, threads)
        return _LOADED[det_side, threads]


def _create_models(det_side: int, threads: int | None):
    try:
        from rapidocr import RapidOCR
    except ImportError:
        raise MissingDependencyError(f"reading text in photos needs rapidocr: {OCR_EXTRA}") from None
    params = {"Global.log_level": "error", "Det.limit_type": "max", "Det.limit_side_len": det_side}
    if threads:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
        params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
    try:
        engine = RapidOCR(params=params)
        return engine._load_det_model(), engine._load_cls_model(), engine._load_rec_model()
    except Exception as exc:  # noqa: BLE001 - a broken install, a missing model file
        raise OcrError(f"cannot load the OCR models: {type(exc).__name__}: {exc}"[:300]) from None


def _detect(det, bgr, det_side: int) -> list:
    """Quadrilaterals of the text lines, in the pixels of `bgr`, detected on a copy scaled to
    det_side pixels on the long side: reduced for large photos, enlarged (at most UPSCALE_MAX
    times) for small ones, whose small print the detector otherwise misses."""
    import cv2
    import numpy as np

    height, width = bgr.shape[:2]
    scale = min(UPSCALE_MAX, det_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = bgr if scale == 1.0 else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    found = det(small)
    if found.boxes is None or len(found.boxes) == 0:
        return []
    out = []
    for quad in found.boxes:
        q = np.asarray(quad, dtype=np.float32) / scale
        q[:, 0] = q[:, 0].clip(0, width - 1)
        q[:, 1] = q[:, 1].clip(0, height - 1)
        out.append(q)
    return out


def _crop(bgr, quad):
    from rapidocr.utils.process_img import get_rotate_crop_image

    return get_rotate_crop_image(bgr, quad.copy())


def _recognise(rec, crops: Sequence) -> tuple[list[str], list[float]]:
    from rapidocr.ch_ppocr_rec import TextRecInput

    out = rec(TextRecInput(img=list(crops)))
    if out.txts is None:
        return [""] * len(crops), [0.0] * len(crops)
    return list(out.txts), [float(s) for s in out.scores]
