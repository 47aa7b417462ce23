"""Why `--regions` cannot keep indexing within 2x its time with the offline encoder (the aim of
issue 19), measured rather than estimated. Two parts:

1. cost: the dense region pass's CNN alone (ONNX Runtime, the index export's regions tower, one
   photo a call, pixels prepared beforehand: no decoding, no pooling, no catalog) at short sides
   224 to 448 px, over the photos of benchmarks/regions.py's pasted set, against the whole
   `index` run of those photos (regions.py's built.json). And the whole-photo pass's own CNN
   (the export's image tower on the 224 px crops), which a shared pass would replace.
2. quality of a shared pass: one pass per photo for both its vector and its regions means the
   photo vector pooled from that pass at the regions' resolution instead of the encoder's own
   224 px centre crop: pooled over the full frame, or over the centre window (the cells of the
   square the crop covers). t2i mAP of `a photo of a {class}` over caltech101-train (the fit
   split), each way.
3. a shared pass at 288 px, sketched and timed end to end but for the catalog: decode as the
   indexer does, the centre window and the regions from one run of the regions tower.

With regions.py's region gains by side (t2i R@10 on train: 224 px 1.10x, 288 1.6x, 320 2.0x,
448 2.3x; the target is 1.5x), the floor of each way follows: a second pass at >= 288 px costs
its CNN on top of the whole index run (over 2x); a shared pass replaces the 224 px CNN, and its
photo vector must keep the whole-photo mAP within 0.01.

    python benchmarks/regions.py --work /tmp/regions-bench              # the pasted set, indexed
    python benchmarks/regions_bound.py --work /tmp/regions-bench --cache /tmp/adapt-cache

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adapt as A  # noqa: E402
from tags import log  # noqa: E402

SIDES = (224, 288, 320, 448)
SHARED_SIDES = (288, 320)


def cnn_seconds(regions, image_encoder, photos: list[Path]) -> dict:
    """Seconds of CNN over the photos: the regions tower at each side, the image tower at 224."""
    from PIL import Image

    from retriever.encoders import region_pass

    images = [Image.open(p).convert("RGB") for p in photos]
    out = {}
    for side in SIDES:
        inputs = [region_pass.input_pixels(im, side) for im in images]
        window = [np.full((1, (x.shape[2] // 32) * (x.shape[3] // 32)), 1.0, np.float32) for x in inputs]
        window = [w / w.sum() for w in window]
        regions.embed_regions(images[0], [(0, 0, 10, 10)], images[0].size, side)  # the session, warm
        start = time.perf_counter()
        for x, w in zip(inputs, window):
            regions._session.run(["embedding"], {"pixels": x, "windows": w})
        out[f"regions_{side}"] = round(time.perf_counter() - start, 2)
    crops = [image_encoder.preprocess(im) for im in images]
    image_encoder.embed_preprocessed(crops[:32])  # warm
    start = time.perf_counter()
    for i in range(0, len(crops), 32):
        image_encoder.embed_preprocessed(crops[i:i + 32])
    out["image_224"] = round(time.perf_counter() - start, 2)
    return out


def shared_pass_seconds(regions, photos: list[Path], side: int = 288) -> float:
    """A shared pass, timed as a sketch (not the library's): each photo read and decoded as the
    indexer decodes it (draft to at least 2 x side), its input and windows prepared (the centre
    window for the photo vector, the level-3 grid for its regions) in 2 decoding threads, and
    the regions tower run in this one. No catalog writes."""
    from concurrent.futures import ThreadPoolExecutor

    from retriever.encoders import region_pass
    from retriever.images import decode
    from retriever.regions import region_boxes

    def prepare(path: Path):
        image = decode(path.read_bytes(), str(path), draft_min_side=2 * side).image.convert("RGB")
        w, h = image.size
        s = min(w, h) * 224 / 256
        boxes = [((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2), *region_boxes(w, h, (3,))]
        return region_pass.prepare(image, boxes, (w, h), side)

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for _, pixels, windows in pool.map(prepare, photos):
            regions._session.run(["embedding"], {"pixels": pixels, "windows": windows})
    return round(time.perf_counter() - start, 2)


def shared_pass_map(regions, cache: Path) -> dict:
    """t2i mAP on caltech101-train: the library's photo vectors (224 px crop) against the photo
    vector pooled from the full frame at each of SHARED_SIDES."""
    from PIL import Image

    x, y, paths = A.split("caltech101-train", cache)
    classes = sorted(set(y.tolist()))
    text = A.text_vectors(cache, classes)

    def mean_ap(v: np.ndarray) -> float:
        return round(float(np.mean([A.average_precision(v @ text[i], y == c) for i, c in enumerate(classes)])), 4)

    out = {"photos": len(paths), "crop_224": mean_ap(x)}
    for side in SHARED_SIDES:
        log(f"photo vectors from the pass at {side} px ...")
        full, centre = [], []
        for p in paths:
            im = Image.open(p).convert("RGB")
            w, h = im.size
            s = min(w, h) * 224 / 256  # the square the 224 px crop of the 256 px resize covers
            boxes = [(0, 0, w, h), ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)]
            vectors = regions.embed_regions(im, boxes, im.size, side)[1]
            full.append(vectors[0])
            centre.append(vectors[1])
        out[f"full_frame_{side}"] = mean_ap(np.array(full))
        out[f"centre_{side}"] = mean_ap(np.array(centre))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/regions-bench"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/adapt-cache"))
    ap.add_argument("--split", choices=["fit", "report"], default="report",
                    help="whose pasted set to time (regions.py's; its index run must not have made the ONNX export)")
    args = ap.parse_args(argv)

    from retriever.index import Index
    from retriever.onnx import onnx_encoder_for, onnx_regions_for

    home = args.work / args.split / "home"
    built = json.loads((home / "built.json").read_text())
    photos = sorted(p for p in (args.work / args.split / "photos").iterdir() if p.is_file())
    with Index.open(home, "default", read_only=True) as index:
        regions, image_encoder = onnx_regions_for(index, threads=2), onnx_encoder_for(index, threads=2)
        if regions is None or image_encoder is None:
            raise SystemExit("the pasted set's index has no ONNX export with a regions tower: run regions.py again")
        log(f"timing the CNN over {len(photos)} photos ...")
        cnn = cnn_seconds(regions, image_encoder, photos)
        log("a shared pass at 288 px, sketched ...")
        shared_s = shared_pass_seconds(regions, photos)
        shared = shared_pass_map(regions, args.cache)
    index_s = float(built["index_s"])
    floors = {}
    for side in SIDES:
        second = cnn[f"regions_{side}"]
        floors[side] = {"second_pass": round((index_s + second) / index_s, 2),
                        "shared_pass": round((index_s - cnn["image_224"] + second) / index_s, 2)}
    result = {"benchmark": "regions-bound", "photos": len(photos), "index_s": index_s, "cnn_s": cnn,
              "floor_ratio": floors, "shared_pass_288_s": shared_s,
              "shared_pass_288_ratio": round(shared_s / index_s, 2), "shared_pass_map_train": shared}
    print(json.dumps(result))
    print(f"\nindex run of {len(photos)} photos: {index_s} s (its 224 px CNN alone: {cnn['image_224']} s)")
    print("| short side | regions CNN alone (s) | floor, second pass (x index) | floor, shared pass (x index) |")
    print("|---|---|---|---|")
    for side in SIDES:
        print(f"| {side} | {cnn[f'regions_{side}']} | {floors[side]['second_pass']} | {floors[side]['shared_pass']} |")
    print(f"\na shared pass at 288 px, sketched (decode, centre window and level-3 regions, no catalog): "
          f"{shared_s} s, {result['shared_pass_288_ratio']}x the index run")
    print(f"\nphoto vectors, t2i mAP on caltech101-train ({shared['photos']} photos): 224 px crop {shared['crop_224']}"
          + "".join(f"; pass at {s} px: full frame {shared[f'full_frame_{s}']}, centre window "
                    f"{shared[f'centre_{s}']}" for s in SHARED_SIDES))
    return result


if __name__ == "__main__":
    main()
