"""VLM grounding: boxes read from a model's answer (retriever/vlm/grounding.py), `retriever locate`,
`ask --boxes`, /api/locate and /api/ask?boxes=1, Collection.locate and Collection.ask(boxes=True).

Two kinds of evidence. Recorded answers, written from each family's documented format (Qwen2-VL's
box tokens in 0-1000, Qwen2.5-VL's JSON in its input's pixels, PaliGemma's <locDDDD> in 1024ths
with y first, Florence-2's <loc_DDD> bins), parsed onto photos of known sizes, Florence-2's checked
against transformers' own post-processor. And tiny random models of the Qwen2-VL, PaliGemma and
Florence-2 architectures (tests/tiny_vlm.py), loaded as a user's folder is: their garbage must give
no box (or a clamped one) and never an error; a recorded answer fed through their real tokenizers
(the model's generate made to write it) must come back as the boxes it holds."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retriever.cli import main
from retriever.vlm.errors import NoGroundingError
from retriever.vlm.grounding import FAMILIES, GroundedBox, find_boxes, parse_boxes, strip_markup
from tests.conftest import PHOTOS
from tests.test_browser import _open, browser, new_page  # noqa: F401  (the page test's fixtures)

CHELSEA = PHOTOS / "chelsea.png"  # 451 x 300
COFFEE = PHOTOS / "coffee.jpg"  # 600 x 400


def boxes_of(text, family, width, height, **kw):
    return [(b.label, [round(v, 1) for v in b.box]) for b in parse_boxes(text, family, width, height, **kw)]


# -- recorded answers --------------------------------------------------------------------------------

QWEN2_VL = ("<|object_ref_start|>the red car<|object_ref_end|><|box_start|>(110,520),(480,890)<|box_end|> and "
            "<|object_ref_start|>two dogs<|object_ref_end|><|box_start|>(500,600),(620,800)<|box_end|>"
            "<|box_start|>(700,610),(820,790)<|box_end|>")
QWEN2_5_VL = ('```json\n[\n\t{"bbox_2d": [135, 114, 416, 372], "label": "cat"},\n'
              '\t{"bbox_2d": [20, 300, 110, 392], "label": "the \\"left\\" cup"}\n]\n```')
PALIGEMMA = "<loc0256><loc0128><loc0768><loc0896> dog ; <loc0000><loc0512><loc1023><loc1023> ball"
PALIGEMMA_SEGMENT = ("<loc0000><loc0000><loc0930><loc1012> " + "".join(f"<seg{i:03}>" for i in range(16)) +
                     " wall ; <loc0722><loc0047><loc0895><loc0378> car")
FLORENCE2 = "</s><s>A green car<loc_52><loc_333><loc_932><loc_774>a yellow building<loc_0><loc_2><loc_998><loc_693></s>"


def test_qwen2_vl_boxes_are_thousandths_of_a_non_square_photo():
    # 4032 x 3024: x by the width, y by the height; a reference's second box keeps its label
    assert boxes_of(QWEN2_VL, "qwen2_vl", 4032, 3024) == [
        ("the red car", [443.5, 1572.5, 1935.4, 2691.4]),
        ("two dogs", [2016.0, 1814.4, 2499.8, 2419.2]),
        ("two dogs", [2822.4, 1844.6, 3306.2, 2389.0])]


def test_qwen2_5_vl_json_is_in_the_pixels_of_its_resized_input():
    # the photo 900 x 600 went in as 448 x 392 (a grid of 28-pixel patches): boxes scale back
    got = boxes_of(QWEN2_5_VL, "qwen2_5_vl", 900, 600, input_size=(448, 392))
    assert got == [("cat", [271.2, 174.5, 835.7, 569.4]), ('the "left" cup', [40.2, 459.2, 221.0, 600.0])]
    # Qwen3-VL writes the same JSON in thousandths
    assert boxes_of('{"bbox_2d": [100, 250, 500, 750], "label": "dog"}', "qwen3_vl", 900, 600) == [
        ("dog", [90.0, 150.0, 450.0, 450.0])]


def test_paligemma_detections_are_y_first_in_1024ths():
    # "detect dog ; ball" on 2000 x 1000: y_min, x_min, y_max, x_max / 1024
    assert boxes_of(PALIGEMMA, "paligemma", 2000, 1000) == [
        ("dog", [250.0, 250.0, 1750.0, 750.0]), ("ball", [1000.0, 0.0, 1998.0, 999.0])]
    # `segment` output: the 16 mask tokens between the box and the label are skipped
    assert [label for label, _ in boxes_of(PALIGEMMA_SEGMENT, "paligemma", 640, 480)] == ["wall", "car"]


def test_florence2_phrase_grounding_agrees_with_its_own_post_processor():
    from transformers.models.florence2.processing_florence2 import Florence2PostProcessor

    class Tokenizer:
        all_special_tokens = ["<s>", "</s>", "<pad>"]

    theirs = Florence2PostProcessor({"phrase_grounding": {}}, Tokenizer()).parse_phrase_grounding_from_text_and_spans(
        FLORENCE2, image_size=(1000, 500))
    ours = parse_boxes(FLORENCE2, "florence2", 1000, 500)
    assert [b.label for b in ours] == [t["cat_name"] for t in theirs] == ["A green car", "a yellow building"]
    # theirs truncates to integers; ours keeps the bin centre
    assert [[int(v) for v in b.box] for b in ours] == [box for t in theirs for box in t["bbox"]]
    assert ours[0].box == (52.5, 166.75, 932.5, 387.25)


def test_a_florence2_phrase_may_hold_several_boxes():
    text = "cat<loc_0><loc_0><loc_500><loc_500><loc_500><loc_500><loc_999><loc_999><loc_7>"
    assert [b.label for b in parse_boxes(text, "florence2", 100, 100)] == ["cat", "cat"]  # the 9th loc: dropped


@pytest.mark.parametrize("text, family, expected", [
    ("<|box_start|>(900,800),(100,200)<|box_end|>", "qwen2_vl", [("", [10.0, 20.0, 90.0, 80.0])]),  # reversed
    ("<|box_start|>(-50,-20),(2000,400)<|box_end|>", "qwen2_vl", [("", [0.0, 0.0, 100.0, 40.0])]),  # clamped
    ("<|box_start|>(100,200),(300,400)", "qwen2_vl", [("", [10.0, 20.0, 30.0, 40.0])]),  # no end token
    ("<|box_start|>(100,200),(30", "qwen2_vl", []),  # truncated
    ("<|box_start|>(nan,1),(2,3)<|box_end|>", "qwen2_vl", []),
    ("<|box_start|>(100,100),(100,500)<|box_end|>", "qwen2_vl", []),  # no width
    ("<|box_start|>(1200,1200),(1500,1900)<|box_end|>", "qwen2_vl", []),  # all outside: nothing left
    ("<|box_start|>(1" + "0" * 400 + ",1),(2,2)<|box_end|>", "qwen2_vl", []),  # beyond float
    ("<|object_ref_start|>a cat<|object_ref_end|> but no box", "qwen2_vl", []),
    ('{"bbox_2d": [10, 20, 30', "qwen2_5_vl", []),
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "x"}, {"bbox_2d": [5, 5, 5, 5]}', "qwen2_5_vl", [("x", [10, 20, 30, 40])]),
    ("<loc0100><loc0200><loc0300>", "paligemma", []),
    ("<loc0100><loc0200><loc0300><loc0200> flat ;", "paligemma", []),  # x_min == x_max
    ("<loc0000><loc0000><loc9999><loc9999> all", "paligemma", [("all", [0.0, 0.0, 100.0, 100.0])]),
    ("cat<loc_1><loc_2><loc_3>", "florence2", []),
    ("<loc_5><loc_5><loc_5><loc_5>", "florence2", []),
    ("", "florence2", []),
])
def test_malformed_answers_give_a_clamped_box_or_none(text, family, expected):
    got = boxes_of(text, family, 100, 100)
    assert got == [(label, [float(v) for v in box]) for label, box in expected]


def test_garbage_never_raises_and_boxes_stay_inside_the_photo():
    rng = random.Random(0)
    pieces = ["<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "(", ")", ",", "-",
              "12", "999", "1000", "0", "nan", "inf", " ", "dog", ";", "<loc0512>", "<loc1023>", "<loc_10>",
              "<loc_999>", "<seg001>", '{"bbox_2d": [', '"label": "', "]", "}", "\\", "\x00", "é", "<", ">"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40)))
        for family in FAMILIES:
            for b in parse_boxes(text, family, 640, 480, input_size=(320, 240)):
                x0, y0, x1, y1 = b.box
                assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480, (text, family, b)
                assert isinstance(b.label, str) and len(b.label) <= 200


def test_a_family_without_boxes_is_a_typed_error_naming_those_with():
    with pytest.raises(NoGroundingError) as caught:
        parse_boxes("<|box_start|>(1,1),(2,2)<|box_end|>", "idefics3", 10, 10)
    message = str(caught.value)
    assert "\n" not in message and all(name in message for name in ("Qwen2-VL", "PaliGemma", "Florence-2"))


def test_markup_is_stripped_for_reading_and_a_box_as_dict_is_a_region_box():
    assert strip_markup("The <|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> "
                        "is in Photo 2.") == "The dog is in Photo 2."
    # a box without its end token takes only its corners with it
    assert strip_markup("the <|box_start|>(1,2),(3,4) is in Photo 2; <loc0001>ok") == "the is in Photo 2; ok"
    assert GroundedBox("dog", (1.04, 2.0, 3.0, 4.0)).as_dict() == {"box": [1.0, 2.0, 3.0, 4.0], "label": "dog"}
    assert [b.start for b in find_boxes("ab <|box_start|>(1,2),(3,4)<|box_end|>", "qwen2_vl")] == [3]


# -- a photo's size, EXIF orientation ------------------------------------------------------------------


@pytest.fixture
def rotated(tmp_path) -> Path:
    """A JPEG stored 300 x 150 whose EXIF says "rotate 90° clockwise": shown 150 x 300."""
    from PIL import Image

    image = Image.new("RGB", (300, 150), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    return path


class ScriptedVLM:
    """A stand-in with the VLM's interface that answers with `text` and records its prompts."""

    def __init__(self, family, text, chat=True):
        self.family, self.text, self.chat, self.model_id = family, text, chat, f"scripted-{family}"
        self.prompts, self.images = [], []

    def prompt(self, messages):
        return " ".join(p["text"] for m in messages for p in m["content"] if p.get("type") == "text")

    def task_prompt(self, text):
        return text

    def generate(self, prompts, images, max_new_tokens, markup=False):
        self.prompts += prompts
        self.images += images
        return [self.text] * len(prompts)

    def input_size(self, image):
        return (448, 224)


def test_boxes_land_on_an_exif_rotated_photo_as_it_is_shown(rotated):
    from retriever.vlm.locate import locate

    # the left half of the photo as shown (150 wide, 300 tall)
    vlm = ScriptedVLM("qwen2_vl", "<|box_start|>(0,0),(500,1000)<|box_end|>")
    found = locate(vlm, "the red", str(rotated))
    assert (found.width, found.height) == (150, 300) and vlm.images[0].size[0] < vlm.images[0].size[1]
    assert [b.as_dict() for b in found.boxes] == [{"box": [0.0, 0.0, 75.0, 300.0], "label": "the red"}]
    assert vlm.prompts == ["Locate the red in the image, output its bbox coordinates."]


def test_each_family_is_asked_in_its_own_form(rotated):
    from retriever.vlm.locate import locate

    asked = {}
    for family, chat in (("paligemma", False), ("florence2", False), ("qwen2_5_vl", True)):
        vlm = ScriptedVLM(family, "", chat)
        assert locate(vlm, "a <|box_start|>cat ; dog", str(rotated)).boxes == []  # a query writes no tokens
        asked[family] = vlm.prompts[0]
    assert asked == {"paligemma": "detect a cat ; dog", "florence2": "<CAPTION_TO_PHRASE_GROUNDING>a cat ; dog",
                     "qwen2_5_vl": "Locate every a cat ; dog in the image, output the bbox coordinates in JSON format."}
    with pytest.raises(NoGroundingError):
        locate(ScriptedVLM("llava", ""), "a cat", str(rotated))


# -- tiny random models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (folder, loaded VLM): Qwen2-VL (with its box tokens), PaliGemma, Florence-2."""
    pytest.importorskip("transformers")
    import torch

    from retriever.vlm.model import load_vlm
    from tests.tiny_vlm import GROUNDING_BUILDERS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models' ops are microseconds long: threads only wait on each other
    root = tmp_path_factory.mktemp("tiny-grounding")
    out = {}
    for family, build in GROUNDING_BUILDERS.items():
        folder = str(build(root / family))
        out[family] = (folder, load_vlm(folder, device="cpu", max_image_tokens=64))
    yield out
    torch.set_num_threads(threads)


def forced_generate(tokenizer, model, text: str):
    """A generate for `model` that writes `text` (then its end token) after any prompt: the
    recorded answer goes through the real tokenizer and the real decoding."""
    import torch

    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]

    def generate(**batch):
        rows = batch["input_ids"].shape[0]
        new = torch.tensor([ids] * rows)
        if model.config.is_encoder_decoder:  # the decoder's tokens only, from its start token
            start = torch.full((rows, 1), model.generation_config.decoder_start_token_id)
            return torch.cat([start, new], 1)
        return torch.cat([batch["input_ids"], new], 1)

    return generate


@contextmanager
def answering(vlm, text: str):
    original = vlm.model.generate
    vlm.model.generate = forced_generate(vlm.processor.tokenizer, vlm.model, text)
    try:
        yield
    finally:
        vlm.model.generate = original


RECORDED = {"qwen2_vl": QWEN2_VL, "paligemma": PALIGEMMA, "florence2": FLORENCE2}


def test_random_models_answer_garbage_and_locate_survives_it(tiny):
    from retriever.vlm.locate import locate

    for family, (_, vlm) in tiny.items():
        found = locate(vlm, "a cat", str(CHELSEA), max_new_tokens=24)
        assert (found.width, found.height) == (451, 300) and found.family == family
        for b in found.boxes:  # a random model may write a box: inside the photo, labelled
            assert 0 <= b.box[0] < b.box[2] <= 451 and 0 <= b.box[1] < b.box[3] <= 300 and b.label


def test_ask_with_boxes_survives_a_random_model(tiny):
    from retriever.vlm.ask import ask_about

    _, vlm = tiny["qwen2_vl"]
    result = ask_about(vlm, "where is the cat?", [str(CHELSEA), str(COFFEE)], max_new_tokens=24, boxes=True)
    for photo, (w, h) in zip(result.photos, ((451, 300), (600, 400))):
        assert photo.size == (w, h)
        assert all(0 <= b.box[0] < b.box[2] <= w and 0 <= b.box[1] < b.box[3] <= h for b in photo.boxes)


def test_recorded_answers_come_back_through_the_real_tokenizers(tiny):
    from retriever.vlm.locate import locate

    for family, (_, vlm) in tiny.items():
        with answering(vlm, RECORDED[family]):
            found = locate(vlm, "a thing", str(COFFEE))
        assert found.boxes == parse_boxes(RECORDED[family], family, 600, 400, default_label="a thing"), family
        assert len(found.boxes) >= 2
    # the box tokens survived decoding; the end of turn did not
    _, qwen = tiny["qwen2_vl"]
    with answering(qwen, QWEN2_VL):
        text = locate(qwen, "x", str(COFFEE)).answer
    assert "<|box_start|>" in text and "<|im_end|>" not in text


def test_ask_boxes_go_to_the_photo_the_answer_cites(tiny):
    from retriever.vlm.ask import ask_about

    _, vlm = tiny["qwen2_vl"]
    answer = ("In Photo 2 the <|object_ref_start|>cup<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>; "
              "the <|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(1000,1000)<|box_end|> is in photo 1.")
    with answering(vlm, answer):
        result = ask_about(vlm, "where is the cup?", [str(CHELSEA), str(COFFEE)], boxes=True)
    out = result.as_dict()
    assert out["answer"] == "In Photo 2 the cup; the cat is in photo 1." and out["citations"] == [2, 1]
    assert out["raw_answer"].startswith("In Photo 2 the <|object_ref_start|>")
    first, second = out["photos"]
    assert (second["width"], second["height"]) == (600, 400)
    assert second["boxes"] == [{"box": [60.0, 80.0, 300.0, 240.0], "label": "cup"}]
    assert first["boxes"] == [{"box": [0.0, 0.0, 451.0, 300.0], "label": "cat"}]
    # without boxes: the answer as before, no boxes
    assert "boxes" not in ask_about(vlm, "where?", [str(CHELSEA)], max_new_tokens=4).as_dict()["photos"][0]


def test_cli_locate_json_draw_and_refusal(tiny, tmp_path, monkeypatch):
    from PIL import Image

    folder, vlm = tiny["qwen2_vl"]
    tokenizer = vlm.processor.tokenizer
    runner = CliRunner()
    if True:  # the CLI loads a model of its own: its class writes the answer
        monkeypatch.setattr(type(vlm.model), "generate", lambda self, **b: forced_generate(tokenizer, self, QWEN2_VL)(**b))
        drawn = tmp_path / "drawn.jpg"
        result = runner.invoke(main, ["locate", "a car", str(COFFEE), "--vlm", folder, "--device", "cpu", "--json",
                                      "--draw", str(drawn)])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert (out["width"], out["height"]) == (600, 400) and out["query"] == "a car"
        assert out["boxes"][0] == {"box": [66.0, 208.0, 288.0, 356.0], "label": "the red car"}
        with Image.open(drawn) as image:  # the first box's outline is drawn in red on the photo
            assert image.size == (600, 400)
            r, g, b = image.convert("RGB").getpixel((177, 355))  # the bottom edge (y1 = 356), 2 px wide
            assert r > 180 and g < 100 and b < 100, (r, g, b)
        table = runner.invoke(main, ["locate", "a car", str(COFFEE), "--vlm", folder, "--device", "cpu"])
        assert table.exit_code == 0 and table.stdout.splitlines()[1].split()[:4] == ["66", "208", "288", "356"]
    monkeypatch.undo()

    # a random model: exit 0, whatever it writes
    random_run = runner.invoke(main, ["locate", "a cat", str(CHELSEA), "--vlm", tiny["florence2"][0], "--device",
                                      "cpu", "--max-new-tokens", "16", "-v"])
    assert random_run.exit_code == 0, random_run.output
    # a model that writes no boxes: refused from its config, before it loads, in one line
    chat_only = tmp_path / "llava"
    chat_only.mkdir()
    (chat_only / "config.json").write_text('{"model_type": "llava"}')
    refused = runner.invoke(main, ["locate", "a cat", str(CHELSEA), "--vlm", str(chat_only)])
    assert refused.exit_code == 1 and "gives no boxes" in refused.output and "Florence-2" in refused.output
    assert "Traceback" not in refused.output
    missing = runner.invoke(main, ["locate", "a cat", str(tmp_path / "none.jpg"), "--vlm", folder])
    assert missing.exit_code == 1 and "no such image file" in missing.output


def test_cli_ask_boxes_about_given_files(tiny, monkeypatch):
    folder, vlm = tiny["qwen2_vl"]
    tokenizer = vlm.processor.tokenizer
    answer = "The <|object_ref_start|>cup<|object_ref_end|><|box_start|>(0,500),(1000,1000)<|box_end|> is in Photo 2."
    monkeypatch.setattr(type(vlm.model), "generate", lambda self, **b: forced_generate(tokenizer, self, answer)(**b))
    runner = CliRunner()
    args = ["ask", "--boxes", "--image", str(CHELSEA), "--image", str(COFFEE), "where is the cup?", "--vlm", folder,
            "--device", "cpu"]
    out = json.loads(runner.invoke(main, args + ["--json"], catch_exceptions=False).stdout)
    assert out["photos"][1]["boxes"] == [{"box": [0.0, 200.0, 600.0, 400.0], "label": "cup"}]
    assert out["photos"][0]["boxes"] == [] and out["answer"] == "The cup is in Photo 2."
    text = runner.invoke(main, args)
    assert text.exit_code == 0 and "box: [0, 200, 600, 400]  cup" in text.stdout


# -- the HTTP API and the Python API -------------------------------------------------------------------


class RandomTextEncoder:
    """Query texts to seeded random unit vectors: the ask route needs some ranking, not a good one."""

    model_id, dim = "test/random", 8

    def embed_texts(self, texts):
        rng = np.random.default_rng(len(texts))
        v = rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def sized_index(tmp_path):
    """Two example photos whose catalog rows (random vectors, their real sizes) are written directly."""
    from retriever.encoders import ModelSpec
    from retriever.files import fingerprint_file
    from retriever.index import Index

    rng = np.random.default_rng(0)
    rows = []
    for path, (w, h) in ((CHELSEA, (451, 300)), (COFFEE, (600, 400))):
        st = path.stat()
        rows.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frame_ms": None,
                     "fingerprint": fingerprint_file(str(path)), "status": "indexed", "error": None,
                     "width": w, "height": h, "vector": rng.standard_normal(8).astype(np.float32)})
    index = Index.create(tmp_path / "home", "default", ModelSpec("offline"), "test/random", 8)
    index.catalog.write_batch(rows)
    yield index
    index.close()


def test_http_locate_and_ask_with_boxes(tiny, sized_index):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from retriever.serve.app import create_app
    from retriever.serve.service import Service

    _, vlm = tiny["qwen2_vl"]
    ids = {Path(k).name: f.id for k, f in sized_index.catalog.known_files().items()}
    service = Service(sized_index, encoder=RandomTextEncoder(), vlm=vlm, reload_check_s=0)
    answer = "Photo 1 shows the <|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>."
    with TestClient(create_app(service), raise_server_exceptions=False) as client, answering(vlm, answer):
        assert client.get("/api/status").json()["vlm_boxes"] is True
        located = client.get("/api/locate", params={"q": "the cat", "id": ids["coffee.jpg"]})
        assert located.status_code == 200, located.text
        body = located.json()
        assert body["id"] == ids["coffee.jpg"] and (body["width"], body["height"]) == (600, 400)
        assert body["boxes"] == [{"box": [0.0, 0.0, 300.0, 200.0], "label": "cat"}]
        asked = client.get("/api/ask", params={"q": "where is the cat?", "k": 2, "boxes": 1}).json()
        first = asked["photos"][0]
        w, h = first["width"], first["height"]
        assert first["boxes"] == [{"box": [0.0, 0.0, w / 2, h / 2], "label": "cat"}] and first["cited"]
        assert "boxes" not in client.get("/api/ask", params={"q": "where?", "k": 1}).json()["photos"][0]
        assert client.get("/api/locate", params={"q": "x", "id": 999}).status_code == 404
        assert client.get("/api/locate", params={"q": " ", "id": ids["coffee.jpg"]}).status_code == 400
    chat_only = Service(sized_index, encoder=RandomTextEncoder(), vlm=ScriptedVLM("idefics3", ""))
    with TestClient(create_app(chat_only), raise_server_exceptions=False) as client:
        assert client.get("/api/status").json()["vlm_boxes"] is False
        refused = client.get("/api/locate", params={"q": "x", "id": ids["coffee.jpg"]})
        assert refused.status_code == 400 and "gives no boxes" in refused.json()["error"]
    with TestClient(create_app(Service(sized_index, encoder=RandomTextEncoder())),
                    raise_server_exceptions=False) as client:
        assert client.get("/api/locate", params={"q": "x", "id": ids["coffee.jpg"]}).status_code == 501


def test_collection_locate_and_ask_with_boxes(tiny, sized_index):
    from retriever.api import Collection

    _, vlm = tiny["paligemma"]
    collection = Collection(sized_index, encoder=RandomTextEncoder())
    with answering(vlm, PALIGEMMA):
        found = collection.locate("dog ; ball", COFFEE, vlm=vlm)
    assert [b.label for b in found.boxes] == ["dog", "ball"] and found.boxes[0].box == (75.0, 100.0, 525.0, 300.0)
    _, qwen = tiny["qwen2_vl"]
    with answering(qwen, "<|box_start|>(0,0),(1000,1000)<|box_end|>"):
        result = collection.ask("where?", images=[CHELSEA], vlm=qwen, boxes=True)
    assert [b.as_dict() for b in result.photos[0].boxes] == [{"box": [0.0, 0.0, 451.0, 300.0], "label": ""}]
    with pytest.raises(NoGroundingError):
        collection.ask("where?", images=[CHELSEA], vlm=ScriptedVLM("llava", ""), boxes=True)


# -- the page --------------------------------------------------------------------------------------------


def test_the_page_draws_the_boxes_of_an_answer_and_of_find_in_this_photo(tiny, sized_index, new_page):  # noqa: F811
    """In chromium (tests/test_browser.py's fixtures: skipped without it, as there)."""
    pytest.importorskip("fastapi")
    from retriever.serve.server import Server
    from retriever.serve.service import Service
    _, vlm = tiny["qwen2_vl"]
    answer = "Photo 1 shows the <|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>."
    server = Server(Service(sized_index, encoder=RandomTextEncoder(), vlm=vlm), host="127.0.0.1", port=0)
    info = server.start()
    try:
        with answering(vlm, answer):
            page = new_page()
            _open(page, info.url)
            page.locator("#ask-form").wait_for()
            page.fill("#ask", "where is the cat?")
            with page.expect_response(lambda r: "/api/ask?" in r.url) as response:
                page.press("#ask", "Enter")
            body = response.value.json()
            assert "boxes=1" in response.value.url
            page.wait_for_selector("#status:has-text('shown to')")
            first = body["photos"][0]
            w, h = first["width"], first["height"]
            page.locator("#results .card").first.click()
            page.wait_for_selector("#viewer[open]")
            found = page.locator("#viewer-boxes polygon.found")
            found.wait_for()
            assert found.count() == 1
            assert found.get_attribute("points") == f"0,0 {w / 2:g},0 {w / 2:g},{h / 2:g} 0,{h / 2:g}"
            assert page.locator("#viewer-boxes").get_attribute("viewBox") == f"0 0 {w} {h}"
            # "Find in this photo": /api/locate on the photo in the viewer, its boxes drawn
            assert page.locator("#locate-form").is_visible()
            page.fill("#locate", "the cat")
            with page.expect_response(lambda r: "/api/locate?" in r.url) as located:
                page.press("#locate", "Enter")
            assert located.value.json()["boxes"] == [{"box": [0, 0, w / 2, h / 2], "label": "cat"}]
            page.wait_for_selector("#status:has-text('1 boxes for')")
            assert page.locator("#viewer-boxes polygon.found").count() == 1
            assert not page.problems, page.problems
    finally:
        server.stop()
