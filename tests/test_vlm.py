"""VLM reranking, grounded answers, captions and keyword search, with tiny random models built
offline (tests/tiny_vlm.py: SmolVLM's architecture, Idefics3; LLaVA-1.5's; Qwen2-VL's), saved to a
folder and loaded through `load_vlm(folder)` / `--vlm FOLDER` as a user's downloaded model would be.

The random models' answers are gibberish, so what is checked is the plumbing a wrong answer would
hide: which photo reaches the model in which row and order, that scores are the model's own
logits, how answers map back to files, and what lands in the catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from retriever.errors import IndexLockedError, MissingDependencyError, RetrieverError
from retriever.search import Hit
from retriever.vlm.errors import VLMLoadError, VLMNotFoundError
from tests.conftest import PHOTOS, REPO

pytest.importorskip("transformers")

CANDIDATES = ["chelsea.png", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "coins.png", "flower.jpg"]


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny models' operations are microseconds long: on a busy shared CPU, OpenMP threads
    waiting on each other make them 100x slower. One thread here; results are the same."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, str]:
    from tests.tiny_vlm import BUILDERS

    root = tmp_path_factory.mktemp("tiny-vlm")
    return {name: str(build(root / name)) for name, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def vlms(tiny_folders):
    from retriever.vlm.model import load_vlm

    # Qwen2-VL at 64 image tokens a photo instead of 256: the same code paths, a quarter of the time.
    return {name: load_vlm(folder, device="cpu", max_image_tokens=64) for name, folder in tiny_folders.items()}


@pytest.fixture(params=["idefics3", "llava", "qwen2_vl"])
def vlm(request, vlms):
    return vlms[request.param]


@pytest.fixture(scope="session")
def photos():
    from retriever.vlm.photos import load_photo

    return {name: load_photo(str(PHOTOS / name)) for name in CANDIDATES}


class Recorder:
    """Wraps a processor: records each call's text and images, passes everything through."""

    def __init__(self, processor):
        self._processor = processor
        self.calls: list[dict] = []

    def __call__(self, text=None, images=None, **kwargs):
        self.calls.append({"text": list(text), "images": list(images or [])})
        return self._processor(text=text, images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self._processor, name)


@pytest.fixture
def recorded(vlm, monkeypatch):
    recorder = Recorder(vlm.processor)
    monkeypatch.setattr(vlm, "processor", recorder)
    return vlm, recorder


def hits_for(names, frame_ms=None) -> list[Hit]:
    return [Hit(rank=i, score=1.0 - i / 100, id=i, path=str(PHOTOS / n), meta={"frame_ms": frame_ms})
            for i, n in enumerate(names, start=1)]


def same_pixels(a, b) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


# -- loading ----------------------------------------------------------------------------------------


def test_a_model_folder_loads_with_bounded_image_tokens(tiny_folders, vlms):
    smol, llava = vlms["idefics3"], vlms["llava"]
    assert smol.model_id == os.path.realpath(tiny_folders["idefics3"]) and smol.family == "idefics3"
    assert llava.family == "llava" and (smol.device, smol.dtype) == ("cpu", "float32")
    # (32 px / patch 8)^2 / pixel-shuffle 2^2 = 4 tokens; LLaVA: (32 / 8)^2 patches = 16 tokens.
    assert (smol.image_tokens_per_photo, llava.image_tokens_per_photo) == (4, 16)
    assert smol.processor.tokenizer.padding_side == "left"
    assert vlms["qwen2_vl"].family == "qwen2_vl" and 0 < vlms["qwen2_vl"].image_tokens_per_photo <= 64


def test_smolvlm_tile_splitting_is_switched_off(tmp_path, photos):
    """SmolVLM's own processor splits a photo into up to 4x4 tiles + 1; retriever sends one tile."""
    from transformers import AutoProcessor

    from retriever.vlm.model import load_vlm
    from tests.tiny_vlm import build_idefics3

    folder = build_idefics3(tmp_path / "split", splitting=True)
    raw = AutoProcessor.from_pretrained(folder)
    vlm = load_vlm(str(folder), device="cpu")
    prompt = vlm.prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
    unbounded = raw(text=[prompt], images=[photos["rocket.jpg"]], return_tensors="pt")
    bounded = vlm.inputs([prompt], [photos["rocket.jpg"]])
    image_id = vlm.image_token_id
    assert int((unbounded["input_ids"] == image_id).sum()) > 4 * 4
    assert int((bounded["input_ids"] == image_id).sum()) == vlm.image_tokens_per_photo == 4
    assert bounded["pixel_values"].shape[:2] == (1, 1)  # one photo, one tile


def test_qwen2_vl_photos_stay_within_the_image_token_budget(tiny_folders, photos):
    """Qwen2-VL's processor gives a photo one token per 8x8 pixels here (28x28 in the released
    models) up to a large default budget; retriever caps it at QWEN_MAX_IMAGE_TOKENS."""
    from transformers import AutoProcessor

    from retriever.vlm.model import load_vlm
    from retriever.vlm.models import QWEN_MAX_IMAGE_TOKENS

    vlm = load_vlm(tiny_folders["qwen2_vl"], device="cpu")  # the default budget
    raw = AutoProcessor.from_pretrained(tiny_folders["qwen2_vl"])
    prompt = vlm.prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
    for name in ("rocket.jpg", "astronaut.jpg", "coins.png"):
        unbounded = raw(text=[prompt], images=[photos[name]], return_tensors="pt")["input_ids"]
        bounded = vlm.inputs([prompt], [photos[name]])["input_ids"]
        assert int((unbounded == vlm.image_token_id).sum()) > 4 * QWEN_MAX_IMAGE_TOKENS
        assert 0.8 * QWEN_MAX_IMAGE_TOKENS < int((bounded == vlm.image_token_id).sum()) <= QWEN_MAX_IMAGE_TOKENS


def test_missing_weights_fail_fast_with_how_to_fetch_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from retriever.vlm.model import load_vlm

    started = time.monotonic()
    with pytest.raises(VLMNotFoundError) as info:
        load_vlm("HuggingFaceTB/SmolVLM-256M-Instruct", device="cpu")
    assert time.monotonic() - started < 10  # no retries against a hub that is not there
    message = str(info.value)
    assert "HuggingFaceTB/SmolVLM-256M-Instruct" in message and "\n" not in message
    assert "hf download HuggingFaceTB/SmolVLM-256M-Instruct --local-dir DIR" in message and "--vlm DIR" in message
    with pytest.raises(VLMNotFoundError, match="no model folder"):
        load_vlm("./no/such/folder", device="cpu")
    with pytest.raises(VLMLoadError, match="without config.json"):
        load_vlm(str(tmp_path), device="cpu")


def test_the_cli_says_it_in_one_line_without_a_traceback(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "retriever", "ask", "--image", str(PHOTOS / "chelsea.png"), "what is this?",
         "--vlm", "HuggingFaceTB/SmolVLM-256M-Instruct"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: HuggingFaceTB/SmolVLM-256M-Instruct is not in the local")


def test_without_transformers_the_error_says_what_to_install(monkeypatch, tiny_folders):
    from retriever.vlm.model import load_vlm

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'retriever\[vlm\]'"):
        load_vlm(tiny_folders["idefics3"], device="cpu")


def test_a_template_without_a_system_role_gets_the_instructions_in_the_user_turn(vlm, monkeypatch):
    real = vlm.processor.apply_chat_template

    def strict(messages, **kwargs):
        if messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return real(messages, **kwargs)

    monkeypatch.setattr(vlm.processor, "apply_chat_template", strict)
    from retriever.vlm.prompts import ASK_SYSTEM, ask_messages

    prompt = vlm.prompt(ask_messages("where is the cat?", 2))
    assert ASK_SYSTEM in prompt and prompt.index(ASK_SYSTEM) < prompt.index("where is the cat?")


# -- reranking --------------------------------------------------------------------------------------


def direct_score(vlm, query, image) -> float:
    """log P(yes) - log P(no) from one unbatched forward pass of the model itself."""
    import torch

    from retriever.vlm.prompts import NO, YES, rerank_messages

    tokenizer = vlm.processor.tokenizer

    def ids(words):
        return sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words
                       if len(tokenizer.encode(w, add_special_tokens=False)) == 1})

    prompt = vlm.processor.apply_chat_template(rerank_messages(query), add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        logprobs = torch.log_softmax(vlm.model(**inputs).logits[0, -1].float(), dim=-1)
    return float(torch.logsumexp(logprobs[ids(YES)], 0) - torch.logsumexp(logprobs[ids(NO)], 0))


def test_rerank_order_is_the_order_of_the_models_own_scores(vlm, photos):
    from retriever.vlm.rerank import rerank

    scored = CANDIDATES[:4]
    hits = hits_for(scored + ["grass.png", "brick.png"])
    reranked = rerank(vlm, "a cat", hits, top_n=4, batch_size=3)  # two batches: 3 rows, then 1
    direct = {n: direct_score(vlm, "a cat", photos[n]) for n in scored}
    expected = sorted(scored, key=lambda n: -direct[n])
    assert [os.path.basename(r.hit.path) for r in reranked[:4]] == expected
    for r in reranked[:4]:
        assert r.rerank_score == pytest.approx(direct[os.path.basename(r.hit.path)], abs=1e-4)
    assert max(direct.values()) - min(direct.values()) > 0.05  # the photos do change the scores
    # Below top_n: unscored, in encoder order. Everyone keeps the encoder's score; ranks are new.
    assert [(os.path.basename(r.hit.path), r.rerank_score) for r in reranked[4:]] == [("grass.png", None),
                                                                                      ("brick.png", None)]
    assert [r.hit.rank for r in reranked] == list(range(1, 7))
    assert all(r.hit.score == r.encoder_score == hits[r.encoder_rank - 1].score for r in reranked)
    row = reranked[0].as_hit().as_dict()  # what search --json prints
    assert row["rank"] == 1 and row["rerank_score"] == pytest.approx(reranked[0].rerank_score, abs=1e-6)
    assert (row["score"], row["encoder_rank"]) == (round(reranked[0].encoder_score, 6), reranked[0].encoder_rank)


def test_each_candidate_reaches_the_model_with_its_own_photo(recorded, photos):
    from retriever.vlm.rerank import score_photos

    vlm, recorder = recorded
    images = [photos[n] for n in CANDIDATES[:5]]
    batched = score_photos(vlm, "a red rocket", images, batch_size=3)
    calls = recorder.calls
    assert [len(c["images"]) for c in calls] == [3, 2] and [len(c["text"]) for c in calls] == [3, 2]
    sent = [img for c in calls for img in c["images"]]
    assert all(same_pixels(a, b) for a, b in zip(sent, images))
    for call in calls:  # one image placeholder per row: each row holds exactly its own photo
        token = getattr(vlm.processor, "image_token", "<image>")
        assert all(t.count(token) == 1 for t in call["text"])
    single = score_photos(vlm, "a red rocket", images, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)
    # Swapping the photos swaps the scores: a score belongs to its photo, not to its row.
    swapped = score_photos(vlm, "a red rocket", images[::-1], batch_size=3)
    assert swapped == pytest.approx(batched[::-1], abs=1e-4)


def test_a_candidate_that_cannot_be_decoded_is_kept_after_the_scored_ones(vlms, tmp_path):
    from retriever.vlm.rerank import rerank

    hits = hits_for(["chelsea.png", "coffee.jpg"])
    hits.insert(0, Hit(rank=0, score=0.99, id=99, path=str(tmp_path / "gone.jpg"), meta={}))
    reranked = rerank(vlms["idefics3"], "a cat", hits, top_n=3)
    assert reranked[-1].hit.path.endswith("gone.jpg") and reranked[-1].rerank_score is None
    assert reranked[-1].error and all(r.rerank_score is not None for r in reranked[:2])


# -- ask --------------------------------------------------------------------------------------------


def test_ask_sends_one_chat_with_the_k_photos_numbered_in_order(recorded, photos):
    from retriever.vlm.ask import ask_about
    from retriever.vlm.prompts import ASK_SYSTEM

    vlm, recorder = recorded
    names = ["coffee.jpg", "chelsea.png", "rocket.jpg", "coins.png"]
    result = ask_about(vlm, "Which photo shows a cat?", hits_for(names), max_new_tokens=4)
    assert len(recorder.calls) == 1  # one chat, one generation
    (prompt,), sent = recorder.calls[0]["text"], recorder.calls[0]["images"]
    assert all(same_pixels(a, photos[n]) for a, n in zip(sent, names)) and len(sent) == 4
    assert [os.path.basename(p.path) for p in result.photos] == names
    assert [p.number for p in result.photos] == [1, 2, 3, 4]
    token = getattr(vlm.processor, "image_token", "<image>")
    labels = [prompt.index(f"Photo {n}:") for n in range(1, 5)]
    images = [i for i in range(len(prompt)) if prompt.startswith(token, i)]
    assert len(images) == 4 and labels == sorted(labels)
    assert ASK_SYSTEM in prompt and prompt.index(ASK_SYSTEM) < labels[0]
    assert prompt.index("Which photo shows a cat?") > max(labels)
    if vlm.family == "idefics3":  # its template interleaves: each label right before its photo
        assert all(label < image < next_label for label, image, next_label in zip(labels, images, labels[1:] + [10**9]))
    assert result.prompt_tokens > 4 * vlm.image_tokens_per_photo


def test_citations_in_the_answer_map_to_the_photos_given(vlms, monkeypatch):
    from retriever.vlm.ask import ask_about

    vlm = vlms["idefics3"]
    answer = "The cat sleeps in Photo 3; photos 1 and 4 show coins [4]."
    monkeypatch.setattr(vlm, "generate", lambda prompts, images, max_new_tokens: [answer])
    names = ["coffee.jpg", "coins.png", "chelsea.png", "flower.jpg"]
    result = ask_about(vlm, "where is the cat?", hits_for(names))
    assert result.citations == [3, 1, 4]
    assert [os.path.basename(p) for p in result.as_dict()["cited_paths"]] == ["chelsea.png", "coffee.jpg", "flower.jpg"]
    assert [p.cited for p in result.photos] == [True, False, True, True]


@pytest.mark.parametrize("text, expected", [
    ("The cat is in Photo 2.", [2]),
    ("Photos 1 and 3 show the sea.", [1, 3]),
    ("photos 1, 2 and 4 are beaches", [1, 2, 4]),
    ("Images 1-3 were taken at night.", [1, 2, 3]),
    ("See [2] and [1, 3].", [2, 1, 3]),
    ("[Photo 4] shows the receipt.", [4]),
    ("The red car is in #3.", [3]),
    ("The second photo shows a dog; the 4th image a cat.", [2, 4]),
    ("Photo two, not photo 2023.", [2]),
    ("There are 2 photos of dogs.", []),
    ("I cannot tell from these photos.", []),
])
def test_citations_are_parsed_from_real_looking_answers(text, expected):
    from retriever.vlm.ask import parse_citations

    assert parse_citations(text, 4) == expected


def test_frames_of_one_video_go_to_the_model_together_in_time_order(vlms, tmp_path, monkeypatch):
    pytest.importorskip("av")
    from retriever.vlm.ask import ask_about
    from retriever.vlm.photos import load_photo
    from tests.test_video import make_video

    vlm = vlms["idefics3"]
    recorder = Recorder(vlm.processor)
    monkeypatch.setattr(vlm, "processor", recorder)
    video = str(make_video(tmp_path / "clip.mp4"))  # chelsea 0-6 s, coffee 6-12 s, rocket 12-18 s
    hits = [Hit(1, 0.9, 1, video, {"frame_ms": 12000}), Hit(2, 0.8, 2, str(PHOTOS / "coins.png"), {"frame_ms": None}),
            Hit(3, 0.7, 3, video, {"frame_ms": 0})]
    result = ask_about(vlm, "what happens?", hits, max_new_tokens=2)
    assert [(os.path.basename(p.path), p.frame_ms) for p in result.photos] == [
        ("clip.mp4", 0), ("clip.mp4", 12000), ("coins.png", None)]
    expected = [load_photo(video, 0), load_photo(video, 12000), load_photo(str(PHOTOS / "coins.png"))]
    assert all(same_pixels(a, b) for a, b in zip(recorder.calls[0]["images"], expected))


@pytest.mark.slow
def test_cli_ask_over_the_index_and_about_given_files(offline_index, tiny_folders):
    runner = CliRunner()
    home = str(offline_index.folder.parent)
    result = runner.invoke(main, ["ask", "a cat", "--home", home, "--vlm", tiny_folders["llava"], "-k", "3",
                                  "--max-new-tokens", "4", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    searched = [json.loads(line)["path"] for line in runner.invoke(
        main, ["search", "a cat", "--home", home, "-k", "3", "--json"]).stdout.splitlines()]
    assert [p["path"] for p in out["photos"]] == searched and [p["n"] for p in out["photos"]] == [1, 2, 3]
    assert out["cited_paths"] == [out["photos"][n - 1]["path"] for n in out["citations"]]
    assert {"answer", "question", "model", "prompt_tokens"} <= set(out) and out["photos"][0]["score"] > 0

    text = runner.invoke(main, ["ask", "--image", str(PHOTOS / "rocket.jpg"), "--image", str(PHOTOS / "coins.png"),
                                "what is this?", "--vlm", tiny_folders["idefics3"], "--max-new-tokens", "3"])
    assert text.exit_code == 0, text.output
    listing = text.stdout.splitlines()[-2:]
    assert listing[0].split()[0].rstrip("*") == "1" and listing[0].endswith("rocket.jpg")
    assert listing[1].split()[0].rstrip("*") == "2" and listing[1].endswith("coins.png")
    refused = runner.invoke(main, ["ask", "--image", str(PHOTOS / "rocket.jpg"), "x", "--after", "2020"])
    assert refused.exit_code == 1 and "filters do not apply" in refused.output


# -- captions and keyword search --------------------------------------------------------------------


@pytest.fixture
def small_index(tmp_path):
    """An index of four example photos whose rows are written directly (random vectors): captions
    and keyword search never look at vectors, so no encoder is needed."""
    from retriever.encoders import ModelSpec
    from retriever.files import fingerprint_file
    from retriever.index import Index

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for name in ["chelsea.png", "coffee.jpg", "rocket.jpg", "coins.png"]:
        path = folder / name
        path.write_bytes((PHOTOS / name).read_bytes())
        st = path.stat()
        rows.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frame_ms": None,
                     "fingerprint": fingerprint_file(str(path)), "status": "indexed", "error": None,
                     "vector": rng.standard_normal(8).astype(np.float32)})
    index = Index.create(tmp_path / "home", "default", ModelSpec("offline"), "test/random", 8)
    index.catalog.write_batch(rows)
    yield index
    index.close()


def ids_by_name(index) -> dict[str, int]:
    return {os.path.basename(k): f.id for k, f in index.catalog.known_files().items()}


def test_captions_land_on_their_own_photos_and_fts_finds_them(small_index, vlms):
    from sqlalchemy import text

    from retriever.vlm.captions import caption_photos, captions_for, run_captions
    from retriever.keywords import keyword_search
    from retriever.vlm.photos import load_photo

    vlm = vlms["idefics3"]
    summary = run_captions(small_index, vlm, batch_size=3, max_new_tokens=5)
    assert (summary.captioned, summary.failed, summary.pending, summary.interrupted) == (4, 0, 4, False)
    ids = ids_by_name(small_index)
    stored = captions_for(small_index.catalog, list(ids.values()))
    for name, image_id in ids.items():  # the same caption as when the photo is captioned alone
        own = caption_photos(vlm, [load_photo(str(small_index.folder.parent.parent / "photos" / name))], 5)[0]
        assert stored[image_id]["caption"] == own and stored[image_id]["model"] == vlm.model_id
    with small_index.catalog.engine.connect() as conn:
        fts = dict(conn.execute(text("SELECT rowid, caption FROM keywords")).all())
    assert {i: fts[i] for i in ids.values()} == {i: stored[i]["caption"] for i in ids.values()}
    # A caption with words in it is found by them, stemmed and case-folded.
    from retriever.vlm.captions import write_captions

    row = small_index.catalog.image_rows([ids["coins.png"]])[ids["coins.png"]]
    caption = "Two receipts on a wooden table"
    assert write_captions(small_index.catalog, [(row["id"], caption, row["fingerprint"])], "m") == 1
    assert [i for i, _ in keyword_search(small_index.catalog, "receipt", 5)] == [ids["coins.png"]]
    assert [i for i, _ in keyword_search(small_index.catalog, "TABLES", 5)] == [ids["coins.png"]]


def test_caption_runs_are_incremental_and_resume_after_an_interruption(small_index, vlms):
    from retriever.vlm.captions import caption_counts, run_captions

    vlm = vlms["llava"]
    calls = []

    def load_then_stop(path, frame_ms=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        from retriever.vlm.photos import load_photo

        return load_photo(path, frame_ms)

    first = run_captions(small_index, vlm, batch_size=2, max_new_tokens=3, load=load_then_stop)
    assert first.interrupted and first.captioned == 2  # the first batch was committed
    assert caption_counts(small_index.catalog) == {"items": 4, "with_caption": 2}
    second = run_captions(small_index, vlm, batch_size=2, max_new_tokens=3)
    assert (second.pending, second.captioned) == (2, 2)

    def must_not_load():
        raise AssertionError("nothing to caption: no model should be loaded")

    third = run_captions(small_index, must_not_load, model=vlm.model_id)
    assert (third.pending, third.captioned) == (0, 0)
    replaced = run_captions(small_index, vlms["idefics3"], replace=True, max_new_tokens=2, limit=3)
    assert replaced.captioned == 3


def test_a_caption_follows_its_content_and_leaves_with_its_photo(small_index, vlms):
    from retriever.vlm.captions import captions_for, pending_items, run_captions, write_captions
    from retriever.keywords import keyword_search

    catalog = small_index.catalog
    run_captions(small_index, vlms["idefics3"], max_new_tokens=2)
    ids = ids_by_name(small_index)
    catalog.write_batch([{"id": ids["rocket.jpg"], "fingerprint": "edited"}])  # the file's content changed
    assert ids["rocket.jpg"] not in captions_for(catalog, list(ids.values()))
    assert [p.id for p in pending_items(catalog, vlms["idefics3"].model_id)] == [ids["rocket.jpg"]]
    # A caption made from the old content is not written (an indexer changed it meanwhile).
    assert write_captions(catalog, [(ids["rocket.jpg"], "old", "not-the-fingerprint")], "m") == 0
    catalog.remove([ids["coffee.jpg"]])
    assert ids["coffee.jpg"] not in captions_for(catalog, [ids["coffee.jpg"]])
    assert keyword_search(catalog, "coffee", 5) == []  # the FTS row left with the photo


def test_video_frames_are_captioned_only_when_asked(small_index, vlms, tmp_path):
    pytest.importorskip("av")
    from retriever.files import fingerprint_file
    from retriever.vlm.captions import all_captions, caption_counts, run_captions
    from tests.test_video import make_video

    video = make_video(tmp_path / "clip.mp4")
    st, fp = video.stat(), fingerprint_file(str(video))
    small_index.catalog.write_batch([
        {"path": str(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frame_ms": ms, "fingerprint": fp,
         "status": "indexed", "error": None} for ms in (0, 6000)])
    stills = run_captions(small_index, vlms["idefics3"], max_new_tokens=2)
    assert stills.captioned == 4 and caption_counts(small_index.catalog, frames=True) == {"items": 6, "with_caption": 4}
    frames = run_captions(small_index, vlms["idefics3"], frames=True, max_new_tokens=2)
    assert frames.captioned == 2
    labels = [row["label"] for row in all_captions(small_index.catalog) if row["frame_ms"] is not None]
    assert labels == [f"{video}@00:00:00", f"{video}@00:00:06"]


def test_file_names_are_keywords_before_any_caption_run_and_follow_moves(small_index):
    from retriever.keywords import keyword_search

    catalog = small_index.catalog
    ids = ids_by_name(small_index)
    assert [i for i, _ in keyword_search(catalog, "chelsea", 5)] == [ids["chelsea.png"]]
    # a file's full name finds that file alone: its type (png) is every PNG's word too
    assert [i for i, _ in keyword_search(catalog, "chelsea.png", 5)] == [ids["chelsea.png"]]
    pngs = {i for name, i in ids.items() if name.endswith(".png")}
    assert {i for i, _ in keyword_search(catalog, "png", 50)} == pngs  # alone, the type still finds
    catalog.write_batch([{"id": ids["chelsea.png"], "path": "/elsewhere/IMG_2041-receipt_lunch.png"}])
    assert keyword_search(catalog, "chelsea", 5) == []
    assert [i for i, _ in keyword_search(catalog, "lunch receipts", 5)] == [ids["chelsea.png"]]
    assert keyword_search(catalog, "chelsea", 5, allowed=[ids["coffee.jpg"]]) == []
    assert keyword_search(catalog, "receipt", 5, exclude=[ids["chelsea.png"]]) == []
    for hostile in ['cat" OR NEAR(x', "*", "name:receipt", "AND OR NOT", '"""', "a the of"]:
        keyword_search(catalog, hostile, 5)  # quoted words: never an FTS syntax error


def test_the_migration_indexes_file_names_of_an_existing_catalog(tmp_path, monkeypatch):
    import retriever.store.catalog as catalog_module
    from retriever.store.catalog import Catalog
    from retriever.keywords import keyword_search

    path = tmp_path / "c.db"
    before = [m for m in catalog_module.MIGRATIONS if m[0] != "003_captions"]
    monkeypatch.setattr(catalog_module, "MIGRATIONS", before)
    old = Catalog(path, create=True)
    [image_id] = old.write_batch([{"path": "/p/Receipt-2024.jpg", "size": 1, "mtime_ns": 1, "frame_ms": None,
                                   "fingerprint": "f", "status": "indexed", "error": None}])
    old.close()
    monkeypatch.undo()
    upgraded = Catalog(path)
    assert "003_captions" in upgraded.applied_migrations()
    assert keyword_search(upgraded, "receipt", 5)[0][0] == image_id
    upgraded.close()


def test_fusion_keeps_the_vector_order_without_matches_and_lifts_keyword_matches():
    from retriever.keywords import fuse

    assert [f.id for f in fuse([5, 3, 9, 1], [], 4)] == [5, 3, 9, 1]
    lifted = fuse([5, 3, 9, 1], [1], 4)  # the vector ranking's last is the only keyword match
    assert lifted[0].id == 1 and (lifted[0].vector_rank, lifted[0].keyword_rank) == (4, 1)
    outside = fuse([5, 3, 9, 1], [42], 3)  # a keyword match the vector pool did not hold
    assert outside[0].id == 42 and outside[0].vector_rank is None
    assert [f.id for f in fuse([5, 3], [3, 5], 2)] == [5, 3]  # a tie: the better vector rank first


def test_hybrid_hits_keep_encoder_scores_and_fetch_keyword_only_matches():
    from retriever.keywords import fuse_hits

    candidates = hits_for(["chelsea.png", "coffee.jpg", "rocket.jpg"])  # ids 1, 2, 3; scores .99 .98 .97
    receipt = Hit(rank=0, score=0.12, id=42, path="/p/receipt.jpg", meta={"frame_ms": None})
    fetched = []

    def fetch(ids):
        fetched.append(ids)
        return [receipt]

    fused = fuse_hits(candidates, [(42, 9.0), (3, 1.0)], 3, fetch)
    assert fetched == [[42]]
    assert [(h.id, h.rank, h.score, h.meta["keyword_rank"]) for h in fused] == [
        (42, 1, 0.12, 1), (3, 2, 0.97, 2), (1, 3, 0.99, None)]
    assert [h.id for h in fuse_hits(candidates, [(42, 9.0)], 3, fetch, min_score=0.5)] == [1, 2, 3]
    assert [h.id for h in fuse_hits(candidates, [], 2)] == [1, 2]  # no match: the vector order


def test_cli_caption_then_show(small_index, tiny_folders):
    runner = CliRunner()
    home = str(small_index.folder.parent)
    small_index.close()
    done = runner.invoke(main, ["caption", "--home", home, "--vlm", tiny_folders["idefics3"], "--json", "-q",
                                "--batch-size", "4", "--max-new-tokens", "3"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["captioned"], summary["items"], summary["with_caption"]) == (4, 4, 4)
    again = json.loads(runner.invoke(main, ["caption", "--home", home, "--vlm", tiny_folders["idefics3"],
                                            "--json", "-q"]).stdout)
    assert again["captioned"] == 0 and again["pending"] == 0
    listing = runner.invoke(main, ["caption", "--home", home, "--show", "--json"]).stdout.splitlines()
    shown = sorted(os.path.basename(json.loads(line)["path"]) for line in listing)
    assert shown == ["chelsea.png", "coffee.jpg", "coins.png", "rocket.jpg"]


def test_a_second_caption_run_is_refused_while_one_runs(small_index, vlms):
    from retriever.vlm.captions import caption_lock, run_captions

    with caption_lock(small_index):
        with pytest.raises(IndexLockedError, match="another caption run"):
            run_captions(small_index, vlms["idefics3"])
    assert isinstance(IndexLockedError("x"), RetrieverError)


# -- search --rerank and keyword search, through the CLI ------------------------------------------------


def test_cli_search_rerank_reorders_the_top_n_by_the_model(offline_index, tiny_folders):
    from retriever.vlm.model import load_vlm
    from retriever.vlm.photos import load_photo
    from retriever.vlm.rerank import score_photos

    runner = CliRunner()
    home = str(offline_index.folder.parent)
    plain = [json.loads(line) for line in runner.invoke(
        main, ["search", "a cat", "--home", home, "-k", "8", "--json", "--no-keywords"]).stdout.splitlines()]
    result = runner.invoke(main, ["search", "a cat", "--home", home, "-k", "8", "--json", "--no-keywords",
                                  "--rerank", "--rerank-top", "5", "--vlm", tiny_folders["llava"]],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rank"] for r in rows] == list(range(1, 9))
    top, rest = rows[:5], rows[5:]
    assert {r["path"] for r in top} == {r["path"] for r in plain[:5]}
    assert [r["path"] for r in rest] == [r["path"] for r in plain[5:]]  # below N: encoder order
    scores = [r["rerank_score"] for r in top]
    assert scores == sorted(scores, reverse=True)
    assert all(r["rerank_score"] is None for r in rest)
    by_path = {r["path"]: r for r in plain}
    for r in rows:  # the encoder's score and rank are kept
        assert r["score"] == by_path[r["path"]]["score"] and r["encoder_rank"] == by_path[r["path"]]["rank"]
    # The scores are the model's own for each photo and the query.
    vlm = load_vlm(tiny_folders["llava"], device="cpu")
    direct = score_photos(vlm, "a cat", [load_photo(r["path"]) for r in top])
    assert np.allclose(direct, scores, atol=1e-3)

    text = runner.invoke(main, ["search", "a cat", "--home", home, "-k", "3", "--rerank", "--rerank-top", "3",
                                "--vlm", tiny_folders["llava"]])
    assert text.exit_code == 0 and "(was " in text.stdout.splitlines()[0]

    refused = runner.invoke(main, ["search", str(PHOTOS / "chelsea.png"), "--home", home, "--rerank",
                                   "--vlm", tiny_folders["llava"]])
    assert refused.exit_code == 1 and "--rerank needs text in the query" in refused.stderr


def test_cli_search_finds_a_file_by_its_name_with_keywords(offline_index):
    runner = CliRunner()
    home = str(offline_index.folder.parent)

    def first(*extra):
        out = runner.invoke(main, ["search", *extra, "--home", home, "-k", "3", "--paths"])
        assert out.exit_code == 0, out.output
        return [os.path.basename(p) for p in out.stdout.splitlines()]

    assert first("hubble")[0] == "hubble_deep_field.jpg"  # the name matches: fused to the top
    assert first("hubble", "--no-keywords")[0] != "hubble_deep_field.jpg"  # the embedding alone misses it
    assert first("gravel")[0] == "gravel.webp"
    assert first("a cat") == first("a cat", "--no-keywords")  # no name matches: the embedding's order
    assert "hubble_deep_field.jpg" not in first("hubble", "--format", "png")  # filters apply to matches too
