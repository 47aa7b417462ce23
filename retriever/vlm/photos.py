"""Photos as a vision-language model gets them: decoded by retriever's safe decoder (size limits,
EXIF orientation, HEIC/AVIF/RAW; reduced-size JPEG decoding) or, for a video frame, by PyAV at
the frame's timestamp, shrunk to PHOTO_SIDE on the longer side. And the order in which a set of
search hits is shown to the model."""

from __future__ import annotations

from typing import Any, Sequence

from retriever.vlm.model import PHOTO_SIDE


def load_photo(path: str, frame_ms: int | None = None, max_side: int = PHOTO_SIDE):
    """-> PIL RGB image, longer side at most max_side. Raises a RetrieverError (ThumbnailError) with
    a one-line reason when the file is gone, damaged, or its decoder is missing."""
    from retriever.render.thumbnails import thumbnail

    return thumbnail(path, frame_ms, max_side)


def load_sized(path: str, frame_ms: int | None = None, max_side: int = PHOTO_SIDE):
    """-> (PIL RGB image as load_photo gives it, (width, height) of the original photo after EXIF
    orientation, or of the video frame): what a box from the model is mapped onto. One decode
    (reduced-size for a large JPEG: the size comes from its header). Raises a ThumbnailError."""
    from PIL import Image

    from retriever.errors import ImageDecodeError
    from retriever.images import load
    from retriever.render.thumbnails import ThumbnailError

    try:
        if frame_ms is None:
            decoded = load(path, draft_min_side=max_side)
            image, size = decoded.image, (int(decoded.meta["width"]), int(decoded.meta["height"]))
        else:
            from retriever.video import frame_at

            image = frame_at(path, int(frame_ms))
            size = image.size
    except ImageDecodeError as exc:
        raise ThumbnailError(path, str(exc)) from None
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image, size


def in_viewing_order(hits: Sequence[Any]) -> list[Any]:
    """Hits in relevance order, except that frames of one video are put together, in time order,
    at the place of that video's best frame: [v@0:30, a.jpg, v@0:10] -> [v@0:10, v@0:30, a.jpg].
    A model told "Photo 1 ... Photo 2" then sees a video's moments as they happened."""
    groups: dict[str, list[Any]] = {}
    order: list[tuple[str, Any]] = []  # ("video", path) or ("photo", hit), by first appearance
    for hit in hits:
        if hit.meta.get("frame_ms") is None:
            order.append(("photo", hit))
            continue
        if hit.path not in groups:
            groups[hit.path] = []
            order.append(("video", hit.path))
        groups[hit.path].append(hit)
    out: list[Any] = []
    for kind, value in order:
        if kind == "photo":
            out.append(value)
        else:
            out.extend(sorted(groups[value], key=lambda h: h.meta["frame_ms"]))
    return out
