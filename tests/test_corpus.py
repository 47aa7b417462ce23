"""Every file a disk can hold is either decoded correctly or refused with a clear one-line reason,
quickly, and the walker yields exactly the files an indexer must record (see tests/corpus.py)."""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest

from retriever import images
from retriever.errors import ImageDecodeError
from retriever.files import walk
from tests.corpus import build_corpus, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def check_case(root, case, **decode_options) -> list[str]:
    """What is wrong with one case (empty when it behaves)."""
    path = os.path.join(root, case.name)
    try:
        decoded = images.load(path, **decode_options)
    except ImageDecodeError as exc:
        reason = str(exc)
        problems = [] if case.outcome == "fail" else [f"failed: {reason}"]
        if "\n" in reason or not reason or len(reason) > 300:
            problems.append(f"reason is not one short line: {reason!r}")
        if case.reason and case.reason not in reason:
            problems.append(f"reason {reason!r} lacks {case.reason!r}")
        return problems
    if case.outcome == "fail":
        return [f"decoded to {decoded.image.size}, should have failed ({case.reason})"]
    img = decoded.image
    problems = [] if img.mode == "RGB" else [f"mode {img.mode}"]
    if case.size and not decode_options and img.size != case.size:
        problems.append(f"size {img.size} != {case.size}")
    if case.size and (decoded.meta["width"], decoded.meta["height"]) != case.size:
        problems.append(f"meta size {decoded.meta['width']}x{decoded.meta['height']} != {case.size}")
    for (fx, fy), colour in case.colours.items():
        got = img.getpixel((min(int(fx * img.width), img.width - 1), min(int(fy * img.height), img.height - 1)))
        if max(abs(a - b) for a, b in zip(got, colour)) > 40:
            problems.append(f"pixel at {fx},{fy} is {got}, expected {colour}")
    for key, value in case.meta.items():
        if decoded.meta.get(key) != value:
            problems.append(f"meta[{key!r}] = {decoded.meta.get(key)!r}, expected {value!r}")
    return problems


def test_every_case_decodes_or_fails_cleanly(corpus):
    root, cases = corpus
    problems = {case.name: p for case in cases if (p := check_case(root, case))}
    assert not problems, "\n".join(f"{name!r}: {'; '.join(p)}" for name, p in problems.items())
    assert {c.outcome for c in cases} == {"ok", "fail"} and len(cases) > 60


def test_reduced_scale_decoding_gives_the_same_outcomes(corpus):
    """The indexer decodes with draft_min_side: the same files must pass and fail."""
    root, cases = corpus
    problems = {case.name: p for case in cases if (p := check_case(root, case, draft_min_side=16))}
    assert not problems, "\n".join(f"{name!r}: {'; '.join(p)}" for name, p in problems.items())


def test_walker_yields_exactly_the_files_to_record(corpus):
    root, cases = corpus
    found = sorted(os.path.relpath(e.path, root) for e in walk([root]))
    assert found == sorted(c.name for c in cases)  # no link twice, no FIFO, no folder named x.jpg


def test_bombs_are_refused_fast_and_without_the_memory(corpus):
    root, cases = corpus
    bombs = [c for c in cases if c.name.startswith("bomb/")]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for case in bombs:
        started = time.monotonic()
        with pytest.raises(ImageDecodeError):
            images.load(os.path.join(root, case.name))
        assert time.monotonic() - started < 1.0, case.name
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 200  # a 100000x100000 RGB decode would need 30 GB


def test_make_corpus_maps_names_to_outcomes(tmp_path):
    expected = make_corpus(tmp_path, non_utf8_names=False)
    assert expected["good/astronaut.jpg"] == "ok" and expected["bad/empty.jpg"] == "fail"
    assert all(v in ("ok", "fail") for v in expected.values())
    assert all((tmp_path / name).is_file() for name in expected)
    assert not any("\udce9" in name for name in expected)


def test_good_photos_keep_their_pixels(corpus):
    """The decoded example photo is the file's own pixels (no conversion drift)."""
    from PIL import Image

    root, _ = corpus
    decoded = images.load(str(root / "good/chelsea.png")).image
    with Image.open(root / "good/chelsea.png") as original:
        assert np.array_equal(np.asarray(decoded), np.asarray(original.convert("RGB")))
