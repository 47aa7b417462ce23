"""Videos -> sampled frames, through PyAV (an optional extra: `pip install 'retriever[video]'`).

Each sampled frame becomes an item of the index with its timestamp, shown as
`clip.mp4@00:01:23`. Frames are taken every `every_s` seconds (more apart for long videos, so
that a video gives at most MAX_FRAMES items), by seeking to the keyframe before each target
time and decoding forward to it: a long video is never decoded whole.
"""

from __future__ import annotations

from contextlib import contextmanager

from dataclasses import dataclass
from typing import Any

from retriever.errors import ImageDecodeError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".3gp"})
DEFAULT_EVERY_S = 5.0
MAX_FRAMES = 120  # per video: bounds the work and the memory one file can take
MAX_FRAME_PIXELS = 40_000_000  # 8K is 33 MP


@dataclass
class Frame:
    ms: int  # timestamp of the frame in the video
    image: Any  # PIL RGB image


def is_video_name(name: str) -> bool:
    import os

    return os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


def format_timestamp(ms: int) -> str:
    seconds = ms // 1000
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def sample_frames(path: str, every_s: float = DEFAULT_EVERY_S, max_frames: int = MAX_FRAMES) -> tuple[list[Frame], dict]:
    """-> (frames, metadata: width, height, format, duration_ms). Raises ImageDecodeError."""
    with _opened(path) as (container, stream):
        duration = _duration_s(container, stream)
        step = max(every_s, duration / max_frames) if duration else every_s
        targets = [i * step for i in range(max_frames) if i * step <= max(duration, 0.0)] or [0.0]
        frames = _frames_at(container, stream, targets)
        meta = {"width": stream.codec_context.width, "height": stream.codec_context.height,
                "format": (container.format.name or "video").split(",")[0],
                "duration_ms": int(duration * 1000) if duration else None}
    if not frames:
        raise ImageDecodeError("no decodable video frame")
    return frames, meta


def frame_at(path: str, frame_ms: int):
    """The first frame at or after frame_ms as an RGB PIL image, found the way sample_frames found
    it (seek to the keyframe before, decode forward): the frame that was embedded."""
    with _opened(path) as (container, stream):
        frames = _frames_at(container, stream, [max(frame_ms, 0) / 1000])
    if not frames:
        raise ImageDecodeError(f"no frame at {format_timestamp(frame_ms)} (the video is shorter)")
    return frames[0].image


@contextmanager
def _opened(path: str):
    """(container, first video stream), with the checks every reader needs; any PyAV or I/O
    failure, inside the with-block too, becomes an ImageDecodeError with a one-line reason."""
    try:
        import av
    except ImportError:
        raise ImageDecodeError("video support needs: pip install 'retriever[video]' (PyAV)") from None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ImageDecodeError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > MAX_FRAME_PIXELS:
                raise ImageDecodeError(f"video frames too large: {width}x{height}")
            yield container, stream
    except ImageDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, MemoryError) as exc:
        raise ImageDecodeError(f"cannot decode video: {' '.join(str(exc).split())[:200]}") from None


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return 0.0


def _frames_at(container, stream, targets: list[float]) -> list[Frame]:
    """The first frame at or after each target time (seconds), seeking between targets."""
    frames: list[Frame] = []
    time_base = stream.time_base
    for target in targets:
        if target > 0 and time_base:
            container.seek(int(target / time_base), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            if t + 1e-3 >= target:
                chosen = frame
                break
        if chosen is None:  # past the end
            break
        ms = int(round((chosen.time or 0.0) * 1000))
        if frames and ms <= frames[-1].ms:  # the seek landed on a frame we already have
            continue
        frames.append(Frame(ms, chosen.to_image().convert("RGB")))
    return frames
