"""An int8 image tower (`retriever index --precision int8`): the fp32 export's image graph
quantized by ONNX Runtime (dynamic quantization: int8 weights, activations quantized per batch at
run time; the matrix products then run on the CPU's VNNI instructions where it has them).

It is an entry of its own in the model cache, derived from the model's fp32 entry without torch:
    CACHE/onnx/<model>-<key of "MODEL_ID#int8">/
        image.int8.onnx                   the quantized image tower (a quarter of the fp32 size)
        text.onnx, text.*.data, <vocab>   the fp32 entry's text tower, hard-linked (or copied)
        manifest.json                     the record: the fp32 one with the image tower swapped,
                                          "precision": "int8", and the measured agreement
An index created with --precision int8 records it (setting "precision") and uses this entry for
indexing and for image queries (the photos and the query images go through the same tower); text
queries run the fp32 text tower. The agreement with fp32 is measured when the entry is built (mean
and least cosine between the fp32 and int8 vectors of the check images) and an entry below
MIN_COSINE is refused."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import RetrieverError

PRECISIONS = ("fp32", "int8")
SUFFIX = "#int8"  # the cache key of a model's int8 entry: its model id + this
IMAGE_FILE = "image.int8.onnx"
# Only the matrix products: a transformer's time, quantized with little loss. Convolutions
# quantized dynamically (one activation scale per tensor) moved the offline encoder's vectors to a
# cosine of 0.91 with fp32's on the check images: they stay fp32.
QUANTIZED_OPS = ("MatMul", "Gemm")
MIN_COSINE = 0.99  # least cosine between fp32 and int8 vectors of the check images


class PrecisionError(RetrieverError):
    """An int8 tower that cannot be made or used here."""


def int8_entry(fp32_entry, encoder_class):
    """The int8 entry derived from a model's fp32 cache entry, built once (under the cache's lock);
    encoder_class: retriever.onnx.OnnxEncoder (given: this module is below the package).
    Raises PrecisionError when the quantized tower disagrees with fp32, CacheError when the cache
    cannot be written."""
    from retriever.onnx.cache import ModelCache

    record = fp32_entry.record
    if not (record.get("ok") and (record.get("towers") or {}).get("image") and record.get("image_preprocess")):
        raise PrecisionError("--precision int8 needs the model's ONNX image tower with a torch-free preprocessing, "
                             "which this model's export does not have")
    cache = ModelCache(fp32_entry.folder.parent.parent)
    key = fp32_entry.manifest["model_id"] + SUFFIX
    entry, _ = cache.get_or_create(key, lambda folder: _build(fp32_entry, folder, key, encoder_class), float(record["tolerance"]))
    if not entry.record.get("ok"):
        raise PrecisionError(f"--precision int8 refused for this model: {entry.record.get('reason')}; "
                             "use --precision fp32")
    return entry


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _build(fp32_entry, folder: Path, key: str, OnnxEncoder) -> dict[str, Any]:  # noqa: N803
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # onnx missing
        raise PrecisionError(f"--precision int8 needs onnxruntime's quantization tools: {exc}") from exc
    from retriever.onnx.export import check_images

    record = {k: v for k, v in fp32_entry.record.items() if k not in ("cache", "cache_folder")}
    start = time.perf_counter()
    quantize_dynamic(str(fp32_entry.folder / record["towers"]["image"]["file"]), str(folder / IMAGE_FILE),
                     weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS))
    seconds = round(time.perf_counter() - start, 2)
    kept = [record["towers"][t] for t in ("text", "regions") if t in record["towers"]]  # regions: fp32
    for name in (*(f for tower in kept for f in (tower["file"], tower.get("data"))), record["tokenizer"]["file"]):
        if name:
            _link_or_copy(fp32_entry.folder / name, folder / name)
    image = {"file": IMAGE_FILE, "data": None, "max_abs_diff": None, "seconds": seconds}
    record = {**record, "towers": {**record["towers"], "image": image}, "precision": "int8", "cache_key": key}
    fp32, int8 = OnnxEncoder(fp32_entry.folder, fp32_entry.record), OnnxEncoder(folder, record)
    images = check_images()
    a, b = fp32.embed_images(images), int8.embed_images(images)
    cosines = np.sum(a * b, axis=1)
    image["max_abs_diff"] = float(np.max(np.abs(a - b)))
    rates = _rates(fp32, int8, [fp32.preprocess(images[i % len(images)]) for i in range(8)])
    record["int8"] = {"mean_cosine": round(float(cosines.mean()), 5), "min_cosine": round(float(cosines.min()), 5),
                      "quantization": "dynamic, int8 weights of MatMul and Gemm (onnxruntime.quantization)",
                      **rates, "min_cosine_allowed": MIN_COSINE}
    measured = record.get("indexing") or {}
    record["indexing"] = {**measured, "backend": "onnx", "onnx_images_per_s": rates["int8_images_per_s"]}
    if not float(cosines.min()) >= MIN_COSINE:
        record.update(ok=False, reason=f"int8 vectors differ from fp32 ones (least cosine {cosines.min():.4f} "
                                       f"< {MIN_COSINE}) on the check images")
    return record


def _rates(fp32, int8, pixels) -> dict[str, float]:
    """images/s of each tower on one batch, two warm-ups each, then in the order A B B A B A A B."""
    runners = {"fp32": fp32.embed_preprocessed, "int8": int8.embed_preprocessed}
    seconds = dict.fromkeys(runners, 0.0)
    for name in (*runners, *runners):
        runners[name](pixels)
    for name in ("fp32", "int8", "int8", "fp32", "int8", "fp32", "fp32", "int8"):
        start = time.perf_counter()
        runners[name](pixels)
        seconds[name] += time.perf_counter() - start
    rates = {f"{name}_images_per_s": round(4 * len(pixels) / max(s, 1e-9), 2) for name, s in seconds.items()}
    rates["speedup"] = round(rates["int8_images_per_s"] / rates["fp32_images_per_s"], 3)
    return rates
