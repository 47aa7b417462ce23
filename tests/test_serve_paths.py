"""retriever serve opens a photo only where the catalog recorded it: a folder replaced by a symlink
after indexing (to a folder holding another photo of the same name, size and mtime) is a 404 for
the original, the thumbnail and the metadata; a folder that was already a link when it was indexed
still serves, as long as the file there is the content that was indexed (its fingerprint); a video's
thumbnail frame is read from the descriptor that was checked, not reopened by path."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import PHOTOS

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from retriever.serve.app import create_app
from retriever.serve.service import Service, _open_catalog_path


def make_index(tmp_path: Path, encoder, roots: list[Path], **options):
    from retriever.encoders import ModelSpec
    from retriever.index import Index
    from retriever.indexer import IndexOptions, run_index

    index = Index.create(tmp_path / "home", "default", ModelSpec(name="offline"), encoder.model_id, encoder.dim)
    index.acquire_lock()
    run_index(index, encoder, [str(r) for r in roots], IndexOptions(**options))
    index.release_lock()
    return index


def padded(name: str, size: int) -> bytes:
    """An example JPEG padded to `size` bytes (a decoder stops at the end-of-image marker)."""
    data = (PHOTOS / name).read_bytes()
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


def plant(path: Path, data: bytes, like: Path | None = None) -> Path:
    """Writes a file; with `like`, it also gets like's mtime, so that only its content differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if like is not None:
        st = like.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return path


def swap_in_link(folder: Path, target: Path) -> None:
    """The attack: the indexed folder moved away and a symlink to `target` put in its place."""
    folder.rename(folder.with_name(folder.name + "-moved"))
    folder.symlink_to(target, target_is_directory=True)


def assert_not_served(client, image_id: int, *forbidden: bytes) -> None:
    for url in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumbnail", f"/api/images/{image_id}/meta"):
        r = client.get(url)
        assert r.status_code == 404, (url, r.status_code, r.text[:200])
        assert r.json()["status"] == 404 and "Traceback" not in r.text
        assert not any(data in r.content for data in forbidden)


def mean_colour(jpeg: bytes) -> tuple[int, ...]:
    from PIL import Image, ImageStat

    return tuple(round(c) for c in ImageStat.Stat(Image.open(io.BytesIO(jpeg)).convert("RGB")).mean)


@pytest.fixture
def collection(tmp_path):
    """photos/album/{coffee.jpg, chelsea.png} and photos/top.jpg; coffee.jpg padded so that a
    decoy of the same size can be made from another photo."""
    size = max((PHOTOS / n).stat().st_size for n in ("coffee.jpg", "rocket.jpg")) + 64
    photos = tmp_path / "photos"
    plant(photos / "album" / "coffee.jpg", padded("coffee.jpg", size))
    shutil.copy2(PHOTOS / "chelsea.png", photos / "album" / "chelsea.png")
    shutil.copy2(PHOTOS / "astronaut.jpg", photos / "top.jpg")
    return photos


def test_the_indexed_photos_are_served_with_their_own_bytes(tmp_path, collection, offline_encoder):
    from PIL import Image

    with make_index(tmp_path, offline_encoder, [collection]) as index, \
            TestClient(create_app(Service(index, encoder=offline_encoder)), raise_server_exceptions=False) as c:
        for path in (collection / "album" / "coffee.jpg", collection / "album" / "chelsea.png", collection / "top.jpg"):
            image_id = index.catalog.find_by_path(str(path))["id"]
            original = c.get(f"/api/images/{image_id}")
            assert original.status_code == 200 and original.content == path.read_bytes()
            thumb = c.get(f"/api/images/{image_id}/thumbnail", params={"side": 64})
            assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) == 64
            assert c.get(f"/api/images/{image_id}/meta").json()["path"] == str(path)


def test_a_folder_replaced_by_a_symlink_after_indexing_is_a_404(tmp_path, collection, offline_encoder):
    album = collection / "album"
    coffee = album / "coffee.jpg"
    # A different photo under the same name, with the same size and mtime: only the path tells them apart.
    decoy = plant(tmp_path / "elsewhere" / "coffee.jpg", padded("rocket.jpg", coffee.stat().st_size), like=coffee)
    assert decoy.stat().st_size == coffee.stat().st_size and decoy.read_bytes() != coffee.read_bytes()
    with make_index(tmp_path, offline_encoder, [collection]) as index, \
            TestClient(create_app(Service(index, encoder=offline_encoder)), raise_server_exceptions=False) as c:
        ids = {p: index.catalog.find_by_path(str(p))["id"] for p in (coffee, album / "chelsea.png", collection / "top.jpg")}
        assert c.get(f"/api/images/{ids[coffee]}/thumbnail").status_code == 200  # cached before the swap
        swap_in_link(album, decoy.parent)
        assert (album / "coffee.jpg").read_bytes() == decoy.read_bytes()  # what a path-following open would get
        assert_not_served(c, ids[coffee], decoy.read_bytes()[:4096])
        assert_not_served(c, ids[album / "chelsea.png"])  # not in the decoy folder at all
        top = c.get(f"/api/images/{ids[collection / 'top.jpg']}")  # outside the swapped folder: untouched
        assert top.status_code == 200 and top.content == (collection / "top.jpg").read_bytes()


def test_a_folder_that_was_a_link_when_indexed_is_served_while_its_content_is_the_same(
        tmp_path, collection, offline_encoder):
    """The catalog records the path as walked (not resolved), so a collection reached through a
    link has only linked paths: they are served when the file there hashes to the indexed
    fingerprint (the photo that was indexed, wherever the link leads), and a 404 when the link
    now leads to another file of the same name, size and mtime."""
    real = tmp_path / "disk" / "album"
    shutil.move(collection / "album", real)
    (collection / "album").symlink_to(real, target_is_directory=True)
    outside = shutil.copy2(PHOTOS / "china.jpg", tmp_path / "china.jpg")
    (collection / "linked.jpg").symlink_to(outside)  # a linked file, recorded under the link's path
    linked_coffee = collection / "album" / "coffee.jpg"
    with make_index(tmp_path, offline_encoder, [collection]) as index, \
            TestClient(create_app(Service(index, encoder=offline_encoder)), raise_server_exceptions=False) as c:
        coffee_id = index.catalog.find_by_path(str(linked_coffee))["id"]
        for path in (linked_coffee, collection / "linked.jpg"):
            image_id = index.catalog.find_by_path(str(path))["id"]
            r = c.get(f"/api/images/{image_id}")
            assert r.status_code == 200 and r.content == path.read_bytes()
            assert c.get(f"/api/images/{image_id}/thumbnail").status_code == 200
            assert c.get(f"/api/images/{image_id}/meta").status_code == 200
        # the link re-pointed at a copy of the folder (same bytes): still the indexed photo
        shutil.copytree(real, tmp_path / "copy" / "album")
        (collection / "album").unlink()
        (collection / "album").symlink_to(tmp_path / "copy" / "album", target_is_directory=True)
        r = c.get(f"/api/images/{coffee_id}")
        assert r.status_code == 200 and r.content == (real / "coffee.jpg").read_bytes()
        # ... and at a folder where the name, size and mtime match but the photo is another one
        decoy = plant(tmp_path / "decoy" / "coffee.jpg", padded("rocket.jpg", real.joinpath("coffee.jpg").stat().st_size),
                      like=real / "coffee.jpg")
        (collection / "album").unlink()
        (collection / "album").symlink_to(decoy.parent, target_is_directory=True)
        assert_not_served(c, coffee_id, decoy.read_bytes()[:4096])


def test_a_video_thumbnail_is_decoded_from_the_checked_descriptor(tmp_path, offline_encoder, monkeypatch):
    pytest.importorskip("av")
    import retriever.video
    from tests.test_video import make_video

    clips, decoy = tmp_path / "clips", tmp_path / "decoy"
    clips.mkdir(), decoy.mkdir()
    make_video(clips / "clip.mp4", scenes=[(250, 20, 20)], seconds_each=1, size=(64, 48))
    make_video(decoy / "clip.mp4", scenes=[(20, 20, 250)], seconds_each=1, size=(64, 48))
    with make_index(tmp_path, offline_encoder, [clips]) as index, \
            TestClient(create_app(Service(index, encoder=offline_encoder)), raise_server_exceptions=False) as c:
        row = index.catalog.find_by_path(str(clips / "clip.mp4"))
        assert row["frame_ms"] == 0
        real_frame_at = retriever.video.frame_at

        def swapped_during_decoding(source, frame_ms):
            # The swap lands after the checks, while the frame is being decoded.
            swap_in_link(clips, decoy)
            return real_frame_at(source, frame_ms)

        monkeypatch.setattr(retriever.video, "frame_at", swapped_during_decoding)
        thumb = c.get(f"/api/images/{row['id']}/thumbnail", params={"side": 32})
        assert thumb.status_code == 200
        red, _, blue = mean_colour(thumb.content)
        assert red > 180 and blue < 80  # the indexed (red) video, not the decoy (blue) now at its path
        monkeypatch.setattr(retriever.video, "frame_at", real_frame_at)
        assert_not_served(c, row["id"])  # and once the link is there, nothing is served


def test_the_path_walk_resolves_links_itself(tmp_path):
    """_open_catalog_path, the piece under the service: relative and absolute links, `..` in a
    target, a link loop, a folder and a FIFO named like photos, each resolved without the kernel
    following a link."""
    real = plant(tmp_path / "a" / "b" / "x.jpg", b"jpeg")
    (tmp_path / "rel").symlink_to("a/b")
    (tmp_path / "a" / "up").symlink_to("../a")  # `..` inside a target
    (tmp_path / "abs").symlink_to(tmp_path / "a")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dir.jpg").mkdir()

    def opened(path) -> tuple[bytes, bool]:
        fd, through_link = _open_catalog_path(str(path))
        with os.fdopen(fd, "rb") as f:
            return f.read(), through_link

    assert opened(real) == (b"jpeg", False)
    assert opened(tmp_path / "rel" / "x.jpg") == (b"jpeg", True)
    assert opened(tmp_path / "a" / "up" / "up" / "b" / "x.jpg") == (b"jpeg", True)
    assert opened(tmp_path / "abs" / "b" / "x.jpg") == (b"jpeg", True)
    with pytest.raises(OSError) as loop:
        _open_catalog_path(str(tmp_path / "loop" / "x.jpg"))
    assert loop.value.errno == errno.ELOOP
    for bad in (tmp_path / "dir.jpg", tmp_path / "a" / "b" / "x.jpg" / "y.jpg", tmp_path / "missing.jpg"):
        with pytest.raises(OSError):
            _open_catalog_path(str(bad))
    with pytest.raises(FileNotFoundError):
        _open_catalog_path("s3://bucket/x.jpg")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.jpg")
        with pytest.raises(OSError):  # never opened: an open could block on a FIFO
            _open_catalog_path(str(tmp_path / "fifo.jpg"))
