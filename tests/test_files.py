"""Walking a collection and fingerprints."""

from __future__ import annotations

import hashlib

import pytest

from retriever.errors import RetrieverError
from retriever.files import fingerprint_bytes, fingerprint_file, walk


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_walk_finds_images_recursively_and_skips_hidden_and_litter(tmp_path):
    for rel in ["a.jpg", "sub/b.PNG", "sub/deep/c.webp", "notes.txt", ".hidden.jpg", ".cache/d.jpg",
                "@eaDir/e.jpg", "sub/._f.jpg", "Thumbs.db", "x.tiff", "y.gif", "z.bmp"]:
        touch(tmp_path / rel)
    found = sorted(e.path[len(str(tmp_path)) + 1:] for e in walk([tmp_path]))
    assert found == ["a.jpg", "sub/b.PNG", "sub/deep/c.webp", "x.tiff", "y.gif", "z.bmp"]
    with_hidden = {e.path[len(str(tmp_path)) + 1:] for e in walk([tmp_path], include_hidden=True)}
    assert {".hidden.jpg", ".cache/d.jpg", "@eaDir/e.jpg", "sub/._f.jpg"} <= with_hidden


def test_exclude_globs_and_single_files(tmp_path):
    touch(tmp_path / "keep.jpg")
    touch(tmp_path / "raw/skip.jpg")
    touch(tmp_path / "tmp_1.jpg")
    found = {e.path for e in walk([tmp_path], exclude=["*/raw", "tmp_*"])}
    assert found == {str(tmp_path / "keep.jpg")}
    assert [e.path for e in walk([tmp_path / "raw" / "skip.jpg"])] == [str(tmp_path / "raw/skip.jpg")]


def test_entries_carry_size_and_mtime(tmp_path):
    p = touch(tmp_path / "a.jpg", b"12345")
    (entry,) = walk([tmp_path])
    assert entry.size == 5 and entry.mtime_ns == p.stat().st_mtime_ns


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(RetrieverError, match="no such file or folder"):
        list(walk([tmp_path / "nope"]))


def test_symlink_loops_are_not_followed(tmp_path):
    touch(tmp_path / "a/img.jpg")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    assert [e.path for e in walk([tmp_path])] == [str(tmp_path / "a/img.jpg")]


def test_fingerprint_is_blake2b_of_the_whole_file(tmp_path):
    data = b"head" + b"\0" * (3 << 20) + b"tail"  # differs only past the first megabytes
    p = touch(tmp_path / "a.jpg", data)
    expected = hashlib.blake2b(data, digest_size=16).hexdigest()
    assert fingerprint_file(p) == fingerprint_bytes(data) == expected
    assert fingerprint_bytes(data[:-1] + b"X") != expected
