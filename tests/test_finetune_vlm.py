"""`retriever finetune-vlm`: a LoRA adapter trained on a few (photo, caption) and (photo, question,
answer) pairs with a tiny random VLM built offline (tests/tiny_vlm.py), stored in the index, and
used by caption, ask and search --rerank when the same model is loaded for that index.

What is checked is what a user relies on: the loss falls, the adapter makes the model say what it
was taught about a training photo (and the base model does not), it is used only with the weights
it was trained on, bad training data is one clear error with nothing stored, and a run that dies
leaves the previous adapter in place."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from tests.conftest import PHOTOS

pytest.importorskip("transformers")
pytest.importorskip("peft")

TAUGHT = {"chelsea.png": "a cat", "rocket.jpg": "a red car"}  # captions the model learns
QUESTION = ("coffee.jpg", "what is this?", "coffee")
# Enough to fit three pairs on the tiny model: about 1 s on one CPU thread.
QUICK = {"max_steps": 40, "learning_rate": 1e-2, "grad_accum": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny models' operations are microseconds long: one thread avoids OpenMP waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> str:
    from tests.tiny_vlm import build_idefics3

    return str(build_idefics3(tmp_path_factory.mktemp("tiny-smolvlm") / "model"))


@pytest.fixture(scope="module")
def base(base_folder):
    from retriever.vlm.model import load_vlm

    return load_vlm(base_folder, device="cpu")


def write_pairs(folder, name="pairs.jsonl", rows=None):
    """The photos copied into `folder`, and a training file naming them by relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in [*TAUGHT, QUESTION[0]]:
        shutil.copy2(PHOTOS / photo, folder / photo)
    if rows is None:
        rows = [{"image": photo, "caption": caption} for photo, caption in TAUGHT.items()]
        rows.append({"image": QUESTION[0], "question": QUESTION[1], "answer": QUESTION[2]})
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_index(home):
    """An index of the training photos whose rows are written directly (random vectors): fine-tuning
    and captions never look at vectors, so no encoder is needed."""
    from retriever.encoders import ModelSpec
    from retriever.files import fingerprint_file
    from retriever.index import Index

    photos = write_pairs(home.parent / "indexed").parent
    rng = np.random.default_rng(0)
    rows = []
    for name in [*TAUGHT, QUESTION[0]]:
        path = photos / name
        st = path.stat()
        rows.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frame_ms": None,
                     "fingerprint": fingerprint_file(str(path)), "status": "indexed", "error": None,
                     "vector": rng.standard_normal(8).astype(np.float32)})
    index = Index.create(home, "default", ModelSpec("offline"), "test/random", 8)
    index.catalog.write_batch(rows)
    return index


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base):
    """One training run shared by the tests that look at its result: (index, result, losses of the
    training pairs under the base model before training)."""
    from retriever.vlm.finetune import FinetuneOptions, example_loss, finetune_vlm, read_pairs

    root = tmp_path_factory.mktemp("trained")
    index = make_index(root / "home")
    pairs_file = write_pairs(root / "data")
    before = [example_loss(base, p) for p in read_pairs(pairs_file)]
    steps = []
    result = finetune_vlm(index, base, pairs_file, options=FinetuneOptions(**QUICK), on_step=steps.append)
    assert [s.step for s in steps] == list(range(1, 41)) and steps[-1].loss == result.final_loss
    yield index, result, before, pairs_file
    index.close()


# -- training, storing, using ----------------------------------------------------------------------


def test_the_loss_falls_and_the_adapter_is_stored_privately_in_the_index(trained, base_folder):
    from retriever.vlm.adapters import ADAPTER_INFO, base_fingerprint

    index, result, _, _ = trained
    assert (result.examples, result.captions, result.questions, result.steps) == (3, 2, 1, 40)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) / 3
    assert result.folder.parent == index.folder / "vlm-adapters"
    stored = {p.name for p in result.folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", ADAPTER_INFO} <= stored
    info = json.loads((result.folder / ADAPTER_INFO).read_text())
    assert info["format"] == 1 and info["base_model"] == base_folder == info["base_folder"]
    assert info["base_fingerprint"] == base_fingerprint(base_folder)
    assert (info["examples"], info["steps"], info["final_loss"]) == (3, 40, round(result.final_loss, 6))
    assert not [p for p in result.folder.parent.iterdir() if p.name.startswith(".") and p.is_dir()]  # no leftovers
    assert index.readable_by_others() == []  # 0700 folders, 0600 files, as the rest of the index
    assert stat.S_IMODE(result.folder.stat().st_mode) == 0o700


def test_the_adapter_reloads_and_makes_the_model_say_what_it_was_taught(trained, base, base_folder):
    from retriever.vlm.ask import ask
    from retriever.vlm.captions import caption_photos
    from retriever.vlm.finetune import example_loss, read_pairs
    from retriever.vlm.model import load_vlm
    from retriever.vlm.photos import load_photo

    index, result, before, pairs_file = trained
    adapted = load_vlm(base_folder, device="cpu", adapter_from=index.folder)
    assert adapted.adapter["folder"] == str(result.folder) and adapted.adapter_note is None
    assert adapted.describe()["adapter"]["examples"] == 3
    pairs = read_pairs(pairs_file)
    after = [example_loss(adapted, p) for p in pairs]
    assert all(a < b / 2 for a, b in zip(after, before)), (after, before)
    # The base model is as it was before training (the LoRA layers are gone from it).
    assert np.allclose([example_loss(base, p) for p in pairs], before, atol=1e-5)
    for photo, caption in TAUGHT.items():
        image = load_photo(str(PHOTOS / photo))
        assert caption_photos(adapted, [image], 6) == [caption]
        assert caption_photos(base, [image], 6) != [caption]
    assert ask(adapted, QUESTION[1], [load_photo(str(PHOTOS / QUESTION[0]))], 4).text == QUESTION[2]
    # Without adapter_from (--no-vlm-adapter): the model as published.
    plain = load_vlm(base_folder, device="cpu")
    assert plain.adapter is None and np.isclose(example_loss(plain, pairs[0]), before[0], atol=1e-5)


def test_rerank_scores_come_from_the_adapted_model(trained, base_folder, base):
    from retriever.cli.search import _rerank
    from retriever.query import parse
    from retriever.search import Hit
    from retriever.vlm.model import load_vlm
    from retriever.vlm.photos import load_photo
    from retriever.vlm.rerank import score_photos

    index, result, _, _ = trained
    hits = [Hit(rank=i, score=1 - i / 10, id=i, path=str(PHOTOS / n), meta={})
            for i, n in enumerate(["chelsea.png", "rocket.jpg", "coins.png"], start=1)]
    adapted = load_vlm(base_folder, device="cpu", adapter_from=index.folder)
    reranked = _rerank(hits, parse(("a cat",)), (base_folder, 3, True), "cpu", 3, index.folder)
    plain = _rerank(hits, parse(("a cat",)), (base_folder, 3, False), "cpu", 3, index.folder)
    assert {h.meta["vlm_adapter"] for h in reranked} == {str(result.folder)}
    assert {h.meta["vlm_adapter"] for h in plain} == {None}
    photos = [load_photo(h.path) for h in reranked]
    assert np.allclose([h.meta["rerank_score"] for h in reranked], score_photos(adapted, "a cat", photos), atol=1e-4)
    assert not np.allclose([h.meta["rerank_score"] for h in reranked],
                           score_photos(base, "a cat", photos), atol=1e-3)


def test_an_adapter_is_used_only_with_the_weights_it_was_trained_on(tmp_path, base_folder):
    from retriever.vlm.finetune import FinetuneOptions, finetune_vlm
    from retriever.vlm.model import load_vlm
    from tests.tiny_vlm import build_idefics3, build_llava

    model = str(build_idefics3(tmp_path / "model", seed=0))
    index = make_index(tmp_path / "home")
    try:
        finetune_vlm(index, load_vlm(model, device="cpu"), write_pairs(tmp_path / "data"),
                     options=FinetuneOptions(max_steps=1, grad_accum=1))
        assert load_vlm(model, device="cpu", adapter_from=index.folder).adapter is not None
        # A copy of the same weights elsewhere gets it: the weights decide, not the path.
        assert load_vlm(base_folder, device="cpu", adapter_from=index.folder).adapter is not None
        # The same folder with other weights (a new download, another model copied over it): not used.
        shutil.rmtree(model)
        build_idefics3(model, seed=1)
        changed = load_vlm(model, device="cpu", adapter_from=index.folder)
        assert changed.adapter is None and "trained on other weights" in changed.adapter_note
        other = load_vlm(str(build_llava(tmp_path / "llava")), device="cpu", adapter_from=index.folder)
        assert other.adapter is None and "adapters are for other models" in other.adapter_note
    finally:
        index.close()


# -- bad training data: one clear error, nothing stored ---------------------------------------------


@pytest.mark.parametrize("rows, message", [
    ([{"image": "chelsea.png", "caption": ""}], "line 1: empty caption"),
    ([{"image": "chelsea.png", "caption": "a cat", "tags": "x"}], "unknown column 'tags'"),
    ([{"image": "chelsea.png", "question": "what?"}], "a question without an answer"),
    ([{"image": "nowhere.jpg", "caption": "x"}], "no such image file"),
    ([{"caption": "a cat"}], "no image"),
    ([{"image": "chelsea.png", "caption": 3}], "caption must be text"),
    ([{"image": "chelsea.png", "caption": "a cat"}, {"image": "broken.jpg", "caption": "x"}],
     "line 2: cannot read the photo"),
])
def test_bad_training_data_is_one_clear_error_and_stores_nothing(tmp_path, base, rows, message):
    from retriever.vlm.adapters import stored_adapters
    from retriever.vlm.finetune import TrainingDataError, finetune_vlm

    pairs = write_pairs(tmp_path / "data", rows=rows)
    (pairs.parent / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 10)
    index = make_index(tmp_path / "home")
    try:
        with pytest.raises(TrainingDataError, match=message) as caught:
            finetune_vlm(index, base, pairs)
        assert "\n" not in str(caught.value)
        assert stored_adapters(index.folder) == []
        adapters = index.folder / "vlm-adapters"
        assert not adapters.exists() or [p.name for p in adapters.iterdir()] in ([], ["finetune.lock"])
    finally:
        index.close()


def test_csv_files_and_what_a_row_may_hold(tmp_path):
    from retriever.vlm.finetune import TrainingDataError, read_pairs

    folder = write_pairs(tmp_path / "data").parent
    csv = folder / "pairs.csv"
    csv.write_text("image,caption,question,answer\nchelsea.png,a cat,what is it?,a cat\n"
                   f"{PHOTOS / 'rocket.jpg'},,how many?,  one \n\ncoffee.jpg,coffee,,\n")
    pairs = read_pairs(csv)
    assert [(os.path.basename(p.image), p.question, p.answer) for p in pairs] == [
        ("chelsea.png", None, "a cat"), ("chelsea.png", "what is it?", "a cat"),
        ("rocket.jpg", "how many?", "one"), ("coffee.jpg", None, "coffee")]
    assert pairs[0].image == str(folder / "chelsea.png")  # relative to the file's folder
    csv.write_text("image,label\nchelsea.png,cat\n")
    with pytest.raises(TrainingDataError, match="pairs.csv header: unknown column 'label'"):
        read_pairs(csv)
    with pytest.raises(TrainingDataError, match="no such training file"):
        read_pairs(folder / "missing.jsonl")


def test_a_run_that_dies_leaves_the_previous_adapter_in_place(tmp_path, base, monkeypatch):
    from retriever.vlm import finetune
    from retriever.vlm.adapters import stored_adapters

    index = make_index(tmp_path / "home")
    pairs = write_pairs(tmp_path / "data")
    try:
        first = finetune.finetune_vlm(index, base, pairs, options=finetune.FinetuneOptions(max_steps=1, grad_accum=1))

        def killed(tmp, info):
            raise KeyboardInterrupt

        monkeypatch.setattr(finetune, "store_adapter", killed)
        with pytest.raises(KeyboardInterrupt):
            finetune.finetune_vlm(index, base, pairs, options=finetune.FinetuneOptions(max_steps=2, grad_accum=1))
        [kept] = stored_adapters(index.folder)
        assert kept.folder == first.folder and kept.info["steps"] == 1
        assert sorted(p.name for p in kept.folder.parent.iterdir()) == sorted([first.folder.name, "finetune.lock"])
        assert not any("lora" in name for name, _ in base.model.named_modules())  # the base model is back
    finally:
        index.close()


# -- the command line ---------------------------------------------------------------------------------


def test_cli_finetune_then_caption_ask_list_and_remove(tmp_path, base_folder):
    from retriever.vlm.captions import write_captions

    home = tmp_path / "home"
    index = make_index(home)
    ids = {os.path.basename(f.path): f.id for f in index.catalog.known_files().values()}
    row = index.catalog.image_rows([ids["coffee.jpg"]])[ids["coffee.jpg"]]
    write_captions(index.catalog, [(row["id"], "a cup of coffee", row["fingerprint"])], "someone")
    index.close()
    pairs = write_pairs(tmp_path / "data")
    runner = CliRunner()
    common = ["--home", str(home), "--vlm", base_folder, "--device", "cpu"]

    trained = runner.invoke(main, ["finetune-vlm", str(pairs), "--index-captions", *common, "--max-steps", "30",
                                   "--learning-rate", "1e-2", "--grad-accum", "1", "--holdout", "0.25", "-q"])
    assert trained.exit_code == 0, trained.output
    lines = trained.stdout.splitlines()
    assert lines[0].startswith("trained 30 steps on 3 pairs (") and " -> " in lines[0]
    assert lines[1].startswith("held out 1 pairs: loss ") and "adapter saved in " in lines[2]

    listing = runner.invoke(main, ["finetune-vlm", "--list", "--json", *common]).stdout
    listed = [json.loads(line) for line in listing.splitlines()]
    assert [(a["base_model"], a["examples"], a["steps"]) for a in listed] == [(base_folder, 3, 30)]
    folder = listed[0]["folder"]
    assert folder.startswith(str(home / "default" / "vlm-adapters"))

    captioned = runner.invoke(main, ["caption", *common, "--json", "-q", "--max-new-tokens", "4", "--replace"])
    assert captioned.exit_code == 0, captioned.output
    summary = json.loads(captioned.stdout)
    assert summary["vlm_adapter"] == folder and summary["captioned"] == 3 and "(fine-tuned " in summary["model"]
    plain = json.loads(runner.invoke(main, ["caption", *common, "--json", "-q", "--max-new-tokens", "4", "--replace",
                                            "--no-vlm-adapter"]).stdout)
    assert plain["vlm_adapter"] is None and plain["model"] == base_folder and plain["captioned"] == 3

    question = ["ask", "--image", str(PHOTOS / "chelsea.png"), "what is this?", *common, "--max-new-tokens", "3",
                "--json"]
    assert json.loads(runner.invoke(main, question).stdout)["vlm_adapter"] == folder
    assert json.loads(runner.invoke(main, [*question, "--no-vlm-adapter"]).stdout)["vlm_adapter"] is None

    removed = runner.invoke(main, ["finetune-vlm", "--remove", *common])
    assert removed.exit_code == 0 and "removed the fine-tuned adapter" in removed.stdout
    assert not os.path.exists(folder)
    again = runner.invoke(main, ["finetune-vlm", "--remove", *common])
    assert again.exit_code == 1 and "holds no fine-tuned adapter" in again.output


def test_cli_bad_data_is_one_line_without_a_traceback(tmp_path, base_folder):
    home = tmp_path / "home"
    make_index(home).close()
    pairs = write_pairs(tmp_path / "data", rows=[{"image": "broken.jpg", "caption": "x"}])
    (pairs.parent / "broken.jpg").write_bytes(b"garbage")
    runner = CliRunner()
    for args, message in [
        ([str(pairs)], "pairs.jsonl line 1: cannot read the photo"),
        ([str(tmp_path / "nope.csv")], "no such training file"),
        ([], "give a training file"),
        ([str(pairs), "--remove"], "--remove trains nothing"),
        ([str(pairs), "--target-modules", "nothing_here"], "no such layer in the language model"),
    ]:
        result = runner.invoke(main, ["finetune-vlm", *args, "--home", str(home), "--vlm", base_folder])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), args
    assert not (home / "default" / "vlm-adapters").exists() or \
        [p.name for p in (home / "default" / "vlm-adapters").iterdir()] == ["finetune.lock"]


# -- CUDA ------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_training_on_cuda_in_half_precision(tmp_path, base_folder, half):
    """bf16 (autocast, fp32 LoRA weights) and fp16 (the same, with a gradient scaler): the loss falls,
    and the adapter loads on the GPU and makes what it was taught likelier."""
    import torch

    from retriever.vlm.finetune import FinetuneOptions, Pair, example_loss, finetune_vlm
    from retriever.vlm.model import load_vlm

    vlm = load_vlm(base_folder, device="cuda")
    vlm.model, vlm.dtype = vlm.model.to(getattr(torch, half)), half
    index = make_index(tmp_path / "home")
    try:
        result = finetune_vlm(index, vlm, write_pairs(tmp_path / "data"), options=FinetuneOptions(**QUICK))
        assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) / 3, result.losses
        assert next(vlm.model.parameters()).dtype == getattr(torch, half)  # the base model, as it was
        adapted = load_vlm(base_folder, device="cuda", adapter_from=index.folder)
        assert adapted.adapter is not None and next(adapted.model.parameters()).is_cuda
        taught = Pair(str(PHOTOS / "chelsea.png"), "a cat")
        assert example_loss(adapted, taught) < example_loss(load_vlm(base_folder, device="cuda"), taught) / 2
    finally:
        index.close()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_the_other_chat_families_train_and_reload(tmp_path, family):
    """LLaVA-1.5's template (images first, no system turn) and Qwen2-VL's (a default system turn,
    image tokens that follow the photo's size): the same training, the same effect."""
    from retriever.vlm.captions import caption_photos
    from retriever.vlm.finetune import FinetuneOptions, finetune_vlm
    from retriever.vlm.model import load_vlm
    from retriever.vlm.photos import load_photo
    from tests.tiny_vlm import BUILDERS

    folder = str(BUILDERS[family](tmp_path / family))
    index = make_index(tmp_path / "home")
    try:
        vlm = load_vlm(folder, device="cpu", max_image_tokens=64)
        result = finetune_vlm(index, vlm, write_pairs(tmp_path / "data"), options=FinetuneOptions(**QUICK))
        assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) / 3
        adapted = load_vlm(folder, device="cpu", max_image_tokens=64, adapter_from=index.folder)
        assert caption_photos(adapted, [load_photo(str(PHOTOS / "chelsea.png"))], 6) == ["a cat"]
    finally:
        index.close()
