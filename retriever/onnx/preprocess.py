"""Image preprocessing twins in PIL + numpy (no torch), for the ONNX image tower.

open_clip's validation transform is torchvision's Resize(shortest side, bicubic) + CenterCrop +
ToTensor + Normalize; `ResizeCropNormalize` repeats it with the same PIL calls, and
`describe_transform` reads its parameters off a torchvision Compose (None for any other shape of
transform: then there is no twin and image queries stay on PyTorch). The offline encoder's
preprocessing is already PIL + numpy (`encoders.offline.LitePreprocess`). The export keeps a twin
only when it agrees with the encoder's own preprocessing on the check images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_PIL_FILTERS = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


class ResizeCropNormalize:
    """Decoded RGB image -> float32 (3, crop, crop): short side resized to `size` (long side
    truncated, as torchvision computes it), centre crop, /255, (x - mean) / std."""

    def __init__(self, size: int, crop: int, interpolation: str, mean, std):
        self.size, self.crop, self.interpolation = int(size), int(crop), interpolation
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image: Any) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        if short != self.size:
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            image = image.resize((new_w, new_h), _PIL_FILTERS[self.interpolation])
        w, h = image.size
        if w < self.crop or h < self.crop:  # torchvision pads; never the case after the resize above
            raise ValueError("image smaller than the crop after resizing")
        top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return np.ascontiguousarray((pixels - self.mean) / self.std, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "resize-crop-normalize", "size": self.size, "crop": self.crop,
                "interpolation": self.interpolation, "mean": self.mean.ravel().tolist(),
                "std": self.std.ravel().tolist()}


def describe_transform(transform: Any) -> dict[str, Any] | None:
    """The parameters of a torchvision Compose of exactly Resize(int) + CenterCrop(square) +
    [convert mode] + ToTensor + Normalize; None for anything else."""
    steps = [type(t).__name__ for t in getattr(transform, "transforms", [])]
    steps = [s for s in steps if s not in ("MaybeConvertMode", "_convert_to_rgb", "function")]
    if steps not in (["Resize", "CenterCrop", "ToTensor", "Normalize"],
                     ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]):
        return None
    by_name = {type(t).__name__: t for t in transform.transforms}
    resize, crop, norm = by_name["Resize"], by_name["CenterCrop"], by_name["Normalize"]
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    crop_size = tuple(crop.size) if isinstance(crop.size, (list, tuple)) else (crop.size, crop.size)
    interpolation = getattr(resize.interpolation, "value", str(resize.interpolation))
    if not isinstance(size, int) or resize.max_size is not None or crop_size[0] != crop_size[1] \
            or interpolation not in _PIL_FILTERS:
        return None
    return ResizeCropNormalize(size, crop_size[0], interpolation, norm.mean, norm.std).describe()


class LiteResizeCrop:
    """The offline encoder's preprocessing (encoders.offline.LitePreprocess, whose module imports
    torch): short side to `size` by bicubic with reducing_gap 3, centre crop, (x - 127) / 128."""

    def __init__(self, size: int = 256, crop: int = 224):
        self.size, self.crop = int(size), int(crop)

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        scale = self.size / min(w, h)
        size = (max(self.size, round(w * scale)), max(self.size, round(h * scale)))
        image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32)
        return np.ascontiguousarray(((pixels - 127.0) / 128.0).transpose(2, 0, 1))

    def describe(self) -> dict[str, Any]:
        return {"kind": "effnet-lite", "size": self.size, "crop": self.crop}


def preprocessor_from(description: dict[str, Any]):
    """The twin a recorded description names."""
    if description["kind"] == "resize-crop-normalize":
        return ResizeCropNormalize(description["size"], description["crop"], description["interpolation"],
                                   description["mean"], description["std"])
    if description["kind"] == "effnet-lite":
        return LiteResizeCrop(description["size"], description["crop"])
    raise ValueError(f"unknown preprocessing {description['kind']!r}")
