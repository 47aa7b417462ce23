"""Videos: sampled frames become searchable items with their timestamps."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from retriever.search import Searcher
from retriever.video import format_timestamp, sample_frames
from tests.conftest import PHOTOS

av = pytest.importorskip("av")

SCENES = ["chelsea.png", "coffee.jpg", "rocket.jpg"]  # 6 s each


def make_video(path, scenes=SCENES, seconds_each=6, fps=5, codec="libx264", size=(224, 168)):
    """A real encoded video: each scene (an example photo's name, or an RGB colour) for
    seconds_each seconds."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    for scene in scenes:
        image = (Image.new("RGB", size, scene) if isinstance(scene, tuple)
                 else Image.open(PHOTOS / scene).convert("RGB").resize(size))
        frame = av.VideoFrame.from_image(image)
        for _ in range(seconds_each * fps):
            for packet in stream.encode(frame):
                container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_frames_are_sampled_every_few_seconds(tmp_path):
    video = make_video(tmp_path / "clip.mp4")
    frames, meta = sample_frames(str(video), every_s=3.0)
    assert [f.ms for f in frames] == [0, 3000, 6000, 9000, 12000, 15000]
    assert (meta["width"], meta["height"], meta["duration_ms"]) == (224, 168, 18000)
    assert all(f.image.mode == "RGB" and f.image.size == (224, 168) for f in frames)
    assert format_timestamp(83_500) == "00:01:23" and format_timestamp(3_600_000) == "01:00:00"


@pytest.mark.parametrize("codec,suffix", [("mpeg4", ".mov"), ("libvpx-vp9", ".webm"), ("mjpeg", ".mkv")])
def test_other_containers_and_codecs(tmp_path, codec, suffix):
    video = make_video(tmp_path / f"clip{suffix}", scenes=SCENES[:1], seconds_each=2, codec=codec)
    frames, _ = sample_frames(str(video), every_s=5.0)
    assert [f.ms for f in frames] == [0]


def test_long_videos_give_a_bounded_number_of_frames(tmp_path):
    video = make_video(tmp_path / "clip.mp4", seconds_each=10, fps=2)  # 30 s
    frames, _ = sample_frames(str(video), every_s=1.0, max_frames=4)
    assert len(frames) <= 4 and frames[-1].ms >= 20_000  # spread over the whole video


def test_a_video_indexes_as_timestamped_frames_and_is_searchable(tmp_path, offline_encoder):
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import IndexOptions, run_index

    col = tmp_path / "col"
    col.mkdir()
    make_video(col / "holiday.mp4")
    shutil.copy(PHOTOS / "astronaut.jpg", col)
    (col / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    index = Index.create(tmp_path / "home", "default", ModelSpec("offline"), offline_encoder.model_id,
                         offline_encoder.dim)
    index.acquire_lock()
    summary = run_index(index, offline_encoder, [str(col)], IndexOptions(video_every_s=3.0))
    assert (summary.added, summary.failed) == (2, 1)
    assert "broken.mp4" in summary.failures[0][0] and summary.failures[0][1]
    status = index.status()
    assert status["images"] == status["vectors"] == 1 + 6  # the photo and 6 frames

    searcher = Searcher(index, encoder=offline_encoder)
    cat = searcher.text("a cat", k=1)[0]
    assert (os.path.basename(cat.path), cat.meta["frame_ms"]) in {("holiday.mp4", 0), ("holiday.mp4", 3000)}
    assert cat.label.startswith(str(col / "holiday.mp4") + "@00:00:0")
    coffee = searcher.text("a cup of coffee", k=1)[0]
    assert coffee.meta["frame_ms"] in (6000, 9000) and coffee.as_dict()["timestamp"] in ("00:00:06", "00:00:09")

    # Moved: the frames keep their ids and vectors. Changed: the frames are replaced together.
    before = index.catalog.known_files()[str(col / "holiday.mp4")].ids
    os.rename(col / "holiday.mp4", col / "trip.mp4")
    moved = run_index(index, offline_encoder, [str(col)], IndexOptions(video_every_s=3.0))
    assert moved.moved == 1 and index.catalog.known_files()[str(col / "trip.mp4")].ids == before
    make_video(col / "trip.mp4", scenes=["rocket.jpg"], seconds_each=4)
    changed = run_index(index, offline_encoder, [str(col)], IndexOptions(video_every_s=3.0))
    assert changed.updated == 1
    frames = index.catalog.known_files()[str(col / "trip.mp4")].ids
    assert len(frames) == 2 and not set(frames) & set(before)
    status = index.status()
    assert status["images"] == status["vectors"] == 1 + 2
    index.close()
