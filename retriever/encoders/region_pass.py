"""The dense region pass's input and pooling windows, torch-free (PIL + numpy): shared by the
offline encoder's PyTorch pass (OfflineEncoder.embed_regions) and its ONNX Runtime twin
(retriever.onnx.OnnxRegions), so that both see the same pixels and pool the same cells.

The photo is resized so that both sides are multiples of CELL (32 px, the CNN's total stride):
its short side to `short_side` (rounded to a multiple of 32), its long side to the nearest
multiple of 32 on the photo's aspect ratio (at most twice the short side). Every stride-2
convolution then sees an even size, so the TF-style "same" padding is the same at any size and
one exported graph with dynamic height and width reproduces PyTorch exactly. A box becomes the
feature cells it covers (snapped to the cells' edges, at least one cell); its window is one row
of weights over the gh x gw cells, 1 / (its cell count) on its cells: the pooled feature of a
box is the window times the flattened map, a matrix product (no loop over boxes in the graph).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CELL = 32  # EfficientNet-Lite0's total stride: one feature cell per 32 x 32 input pixels


def input_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(W, H) of the dense pass's input for a width x height photo: multiples of CELL."""
    short = max(CELL, int(round(short_side / CELL)) * CELL)
    long_ = max(width, height) * short / max(1, min(width, height))
    long_ = int(min(2 * short, max(short, round(long_ / CELL) * CELL)))
    return (long_, short) if width >= height else (short, long_)


def input_pixels(image: Any, short_side: int) -> np.ndarray:
    """An RGB PIL image -> the dense pass's input, (1, 3, H, W) float32, pixels (x - 127) / 128
    as the encoder's own preprocessing scales them."""
    from PIL import Image

    size = input_size(image.size[0], image.size[1], short_side)
    pixels = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC, reducing_gap=3.0), np.float32)
    return np.ascontiguousarray(((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None])


def windows(boxes: Sequence[Sequence[float]], full_size: tuple[int, int], grid: tuple[int, int]
            ) -> tuple[list[list[float]], np.ndarray]:
    """Boxes in the photo's pixels (its size `full_size`) -> (the boxes snapped to the cells, in
    the photo's pixels; (n, gh * gw) float32 pooling windows). grid: (gh, gw) feature cells."""
    width, height = full_size
    gh, gw = grid
    snapped, rows = [], np.zeros((len(boxes), gh * gw), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        c0 = min(gw - 1, max(0, int(np.floor(x0 / width * gw + 0.5))))
        c1 = max(c0 + 1, min(gw, int(np.floor(x1 / width * gw + 0.5))))
        r0 = min(gh - 1, max(0, int(np.floor(y0 / height * gh + 0.5))))
        r1 = max(r0 + 1, min(gh, int(np.floor(y1 / height * gh + 0.5))))
        cells = np.zeros((gh, gw), np.float32)
        cells[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
        rows[i] = cells.ravel()
        snapped.append([round(c0 * width / gw, 1), round(r0 * height / gh, 1),
                        round(c1 * width / gw, 1), round(r1 * height / gh, 1)])
    return snapped, rows


def prepare(image: Any, boxes: Sequence[Sequence[float]], full_size: tuple[int, int], short_side: int
            ) -> tuple[list[list[float]], np.ndarray, np.ndarray]:
    """What one dense pass needs: (the boxes snapped to the cells, in the photo's pixels; the
    input (1, 3, H, W); the pooling windows (n, gh * gw))."""
    pixels = input_pixels(image, short_side)
    snapped, rows = windows(boxes, full_size, (pixels.shape[2] // CELL, pixels.shape[3] // CELL))
    return snapped, pixels, rows
