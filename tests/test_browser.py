"""The page in a real browser: Debian's chromium driven by Playwright (the python package only; no
browser download), over a real uvicorn server on the offline index.

Without playwright or chromium (or with a chromium that does not start) the tests skip, saying why;
when the environment variable CI is set they fail instead, so that a CI run cannot pass without
having driven the page (.ci/run installs chromium when apt is there, and fails when CI is set and
it cannot).

Each step takes a screenshot and checks that it shows something: the PNG is decoded and must have
real pixel variety (thousands of colours, a spread of brightness), not only a size on disk."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import PHOTOS

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
JPEGS = sorted(p.name for p in PHOTOS.iterdir() if p.suffix == ".jpg")
PNG_OR_WEBP = sorted(p.name for p in PHOTOS.iterdir() if p.suffix in (".png", ".webp"))


def _chromium() -> str | None:
    chosen = os.environ.get("RETRIEVER_TEST_CHROMIUM")
    if chosen:
        return chosen
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def _unavailable(reason: str):
    """Skip, or fail when CI is set: there, a browser test that cannot run is a broken CI setup."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser tests must run, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright python package is not installed (pip install -e '.[dev]')")
    try:
        import fastapi  # noqa: F401
    except ImportError:
        _unavailable("fastapi is not installed (pip install -e '.[dev]')")
    executable = _chromium()
    if executable is None:
        _unavailable("no chromium found: apt-get install -y chromium (or set RETRIEVER_TEST_CHROMIUM)")
    with sync_playwright() as p:
        failure = None
        try:
            chromium = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001  (a chromium that cannot start here is an environment gap)
            failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if failure is not None:  # outside the except: the report is the reason, not a chained traceback
            _unavailable(f"chromium at {executable} does not start: {failure}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server_url(offline_index, offline_encoder):
    """One server (no VLM) on the offline index for the module's tests."""
    pytest.importorskip("fastapi")
    from retriever.serve.server import Server
    from retriever.serve.service import Service

    server = Server(Service(offline_index, encoder=offline_encoder), host="127.0.0.1", port=0)
    info = server.start()
    yield info.url
    server.stop()


@pytest.fixture
def new_page(browser):
    """new_page(**context_options): a page in a fresh browser context; `page.problems` collects
    the page's uncaught JS errors and console errors (a CSP violation is one)."""
    contexts = []

    def make(**options):
        options.setdefault("viewport", {"width": 1000, "height": 800})
        context = browser.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.problems = []
        page.on("pageerror", lambda exc: page.problems.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: msg.type == "error"
                and page.problems.append(f"console: {msg.text} ({msg.location.get('url')})"))
        return page

    yield make
    for context in contexts:
        context.close()


# -- helpers ------------------------------------------------------------------------------------------


def _screenshot(page, path: Path, *, full_page: bool = False, min_spread: float = 25):
    """Take a screenshot, decode it, and check it is not blank: a page of results shows photo
    thumbnails, so thousands of colours and a wide spread of brightness. Returns the RGB image."""
    from PIL import Image, ImageStat

    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    colours = len(rgb.getcolors(maxcolors=1 << 24))
    spread = ImageStat.Stat(rgb.convert("L")).stddev[0]
    assert colours > 2000 and spread > min_spread, f"{path.name} looks blank: {colours} colours, brightness sd {spread:.1f}"
    return rgb


def _thumbnails_shown(page) -> None:
    """Wait until every result thumbnail in the viewport has loaded and decoded."""
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#results .card img')]"
        ".filter((i) => i.getBoundingClientRect().top < innerHeight);"
        " return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0); }")


def _names(page) -> list[str]:
    return page.locator("#results .card .name").all_inner_texts()


def _scores(page) -> list[float]:
    return [float(s) for s in page.locator("#results .card .score").all_inner_texts()]


def _open(page, url: str) -> None:
    page.goto(f"{url}/")
    page.wait_for_selector("#status:has-text('photos in index')")


def _search(page, query: str, expect_status: str) -> None:
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_selector(f"#status:has-text('{expect_status}')")


def _focused_index(page) -> str | None:
    return page.evaluate("() => document.activeElement && document.activeElement.dataset.index || null")


def _wait_focused(page, index: str) -> None:
    page.wait_for_function("(i) => document.activeElement && document.activeElement.dataset.index === i", arg=index)


def _drop(page, name: str, data: bytes, mime: str) -> None:
    """A real drag and drop of a file onto the results list, as the browser fires it: dragenter
    (the hint shows), dragover, drop, each with the same DataTransfer holding the File."""
    transfer = page.evaluate_handle(
        """([name, b64, mime]) => {
             const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
             const transfer = new DataTransfer();
             transfer.items.add(new File([bytes], name, { type: mime }));
             return transfer;
           }""",
        [name, base64.b64encode(data).decode(), mime])
    page.dispatch_event("#results", "dragenter", {"dataTransfer": transfer})
    assert page.locator("#drop-hint").is_visible()
    page.dispatch_event("#results", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#results", "drop", {"dataTransfer": transfer})
    assert page.locator("#drop-hint").is_hidden()


# -- tests --------------------------------------------------------------------------------------------


def test_search_click_viewer_keys_and_more_like_this(new_page, server_url, tmp_path):
    page = new_page()
    _open(page, server_url)
    assert page.locator("#ask-form").is_hidden()  # no VLM: no ask box
    _search(page, "a cat", "for “a cat”")
    names = _names(page)
    assert names[0] == "chelsea.png" and len(names) == 15
    scores = _scores(page)
    assert scores[0] > 0 and scores == sorted(scores, reverse=True)
    assert "?q=a%20cat" in page.url  # the address holds the query
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "1-results.png")

    # the grid: arrow keys move the focus between cards, by one or by a row
    page.locator("#results .card").first.focus()
    page.keyboard.press("ArrowRight")
    assert _focused_index(page) == "1"
    per_row = page.evaluate("() => getComputedStyle(document.querySelector('#results'))"
                            ".gridTemplateColumns.split(' ').length")
    assert per_row >= 3  # 1000 px wide
    page.keyboard.press("ArrowDown")
    assert _focused_index(page) == str(1 + per_row)
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert _focused_index(page) == "0"
    page.keyboard.press("ArrowLeft")  # nothing before the first
    assert _focused_index(page) == "0"
    page.keyboard.press("ArrowUp")  # nor above the first row
    assert _focused_index(page) == "0"
    # on a wide screen a row holds many more: ArrowDown still lands right below
    page.set_viewport_size({"width": 2560, "height": 800})
    wide = page.evaluate("() => getComputedStyle(document.querySelector('#results'))"
                         ".gridTemplateColumns.split(' ').length")
    assert wide > 10
    page.keyboard.press("ArrowDown")
    below = page.evaluate("() => { const c = document.querySelectorAll('#results .card');"
                          " const a = c[0].getBoundingClientRect(), f = document.activeElement.getBoundingClientRect();"
                          " return [f.left === a.left, f.top > a.bottom]; }")
    assert _focused_index(page) == str(wide) and below == [True, True]
    page.set_viewport_size({"width": 1000, "height": 800})
    page.locator("#results .card").first.focus()

    # Enter on the focused card opens the viewer on it; arrows step through the results
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    assert page.locator("#viewer-title").inner_text() == "chelsea.png"
    assert page.evaluate("() => document.activeElement.id") == "more"
    meta = dict(zip(page.locator("#viewer-meta dt").all_inner_texts(), page.locator("#viewer-meta dd").all_inner_texts()))
    assert meta["format"] == "PNG" and meta["path"] == str(PHOTOS / "chelsea.png")
    assert abs(float(meta["score"]) - scores[0]) <= 0.0005
    original = page.request.get(f"{server_url}/{page.get_attribute('#viewer-original', 'href')}")
    assert original.ok and original.body() == (PHOTOS / "chelsea.png").read_bytes()
    page.wait_for_function("() => { const i = document.querySelector('#viewer-img');"
                           " return i.complete && i.naturalWidth > 0; }")
    _screenshot(page, tmp_path / "2-viewer.png")
    page.keyboard.press("ArrowLeft")  # nothing before the first
    assert page.locator("#viewer-title").inner_text() == "chelsea.png"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.locator("#viewer-title").inner_text() == names[2]
    page.keyboard.press("ArrowLeft")
    assert page.locator("#viewer-title").inner_text() == names[1]
    # Esc closes, and the focus goes back to the card of the photo last shown
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    # (the dialog's close event, which moves the focus, comes a task after `open` goes)
    _wait_focused(page, "1")
    # the last result: ArrowRight stays on it; the Close button closes
    last = page.locator("#results .card").last
    last.click()
    page.wait_for_selector("#viewer[open]")
    page.keyboard.press("ArrowRight")
    assert page.locator("#viewer-title").inner_text() == names[-1]
    page.click("#viewer-close")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    _wait_focused(page, str(len(names) - 1))
    # a click on the backdrop (outside the dialog's box) closes it too
    page.locator("#results .card").first.click()
    page.wait_for_selector("#viewer[open]")
    page.mouse.click(3, 3)
    page.wait_for_selector("#viewer:not([open])", state="attached")

    # More like this: the photos like the cat, without the cat itself
    page.locator("#results .card").first.click()
    page.click("#more")
    page.wait_for_selector("#status:has-text('like chelsea.png')")
    similar = _names(page)
    assert len(similar) == 14 and "chelsea.png" not in similar
    assert page.locator("#viewer[open]").count() == 0
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "3-more-like-this.png", full_page=True)
    assert not page.problems, page.problems


def test_drop_a_photo_then_filter_the_results(new_page, server_url, tmp_path):
    from PIL import ImageStat

    page = new_page()
    _open(page, server_url)
    _search(page, "a rocket", "for “a rocket”")  # something under the drop hint

    # dragging a photo over the page shows the hint, painted over the page
    transfer = page.evaluate_handle("() => { const t = new DataTransfer();"
                                    " t.items.add(new File(['x'], 'x.png', { type: 'image/png' })); return t; }")
    page.dispatch_event("#results", "dragenter", {"dataTransfer": transfer})
    page.locator("#drop-hint").wait_for()
    _thumbnails_shown(page)
    hinted = _screenshot(page, tmp_path / "1-drop-hint.png", min_spread=10)  # under a tint
    r, g, b = ImageStat.Stat(hinted.crop((0, 0, 1000, 800))).mean
    assert b > r + 60 and b > g + 30, (r, g, b)  # the page is tinted the hint's blue
    page.dispatch_event("#results", "dragleave")
    assert page.locator("#drop-hint").is_hidden()

    # dropping the cat photo: a search by that image, the cat first with a score of ~1 (itself)
    _drop(page, "chelsea.png", (PHOTOS / "chelsea.png").read_bytes(), "image/png")
    page.wait_for_selector("#status:has-text('results like chelsea.png')")
    names, scores = _names(page), _scores(page)
    assert names[0] == "chelsea.png" and scores[0] > 0.99 and scores[1] < 0.99, list(zip(names, scores))
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "2-dropped-cat.png")
    # another photo brings another first result: the results follow the dropped file
    _drop(page, "coffee.jpg", (PHOTOS / "coffee.jpg").read_bytes(), "image/jpeg")
    page.wait_for_selector("#status:has-text('results like coffee.jpg')")
    assert _names(page)[0] == "coffee.jpg" and _scores(page)[0] > 0.99
    # the By photo… button does the same with a chosen file
    page.set_input_files("#upload", str(PHOTOS / "flower.jpg"))
    page.wait_for_selector("#status:has-text('results like flower.jpg')")
    assert _names(page)[0] == "flower.jpg" and _scores(page)[0] > 0.99
    # a file that is not a photo: the server's error is shown, marked as one
    _drop(page, "notes.txt", b"not a photo", "text/plain")
    page.wait_for_selector("#status.error")
    assert page.locator("#status").inner_text() == "not an image upload (text/plain)"
    page.problems[:] = [p for p in page.problems if "status of 4" not in p]  # the 4xx's console line

    # filters: the Format filter keeps only the photos of those formats, in the search and the drop
    page.click("#filters summary")
    page.fill("#filters input[name=format]", "jpeg")
    _search(page, "a cat", "for “a cat”")
    assert page.locator("#status").inner_text().endswith("(format JPEG)")  # the filter is said
    assert sorted(_names(page)) == JPEGS
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "3-format-jpeg.png")
    page.fill("#filters input[name=format]", "png, webp")  # several, comma-separated: any of them
    _search(page, "a cat", "for “a cat”")
    assert sorted(_names(page)) == PNG_OR_WEBP and _names(page)[0] == "chelsea.png"
    _drop(page, "coffee.jpg", (PHOTOS / "coffee.jpg").read_bytes(), "image/jpeg")
    page.wait_for_selector("#status:has-text('results like coffee.jpg')")
    assert sorted(_names(page)) == PNG_OR_WEBP  # the drop keeps the filters too
    # Results (k) and Min score narrow the list; In folder takes an absolute folder
    page.fill("#filters input[name=format]", "")
    page.fill("#filters input[name=k]", "3")
    _search(page, "a cat", "for “a cat”")
    top3 = _names(page)
    assert len(top3) == 3 and top3[0] == "chelsea.png"
    page.fill("#filters input[name=k]", "24")
    first, second = _scores(page)[:2]
    page.fill("#filters input[name=min_score]", f"{(first + second) / 2:.4f}")  # between the two: one stays
    _search(page, "a cat", "for “a cat”")
    assert _names(page) == ["chelsea.png"]
    page.fill("#filters input[name=min_score]", "")
    page.fill("#filters input[name=in]", str(PHOTOS.parent / "elsewhere"))
    _search(page, "a cat", "no results")
    assert page.locator("#results .card").count() == 0
    page.fill("#filters input[name=in]", str(PHOTOS))
    _search(page, "a cat", "15 results")
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "4-in-folder.png")
    page.fill("#filters input[name=in]", "photos")  # not absolute: the server says so, the page shows it
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert "absolute folder" in page.locator("#status").inner_text()
    page.problems[:] = [p for p in page.problems if "status of 4" not in p]
    assert not page.problems, page.problems


def test_the_ask_box_with_a_tiny_vlm(new_page, offline_index, offline_encoder, tmp_path):
    pytest.importorskip("transformers")
    import torch

    from retriever.serve.server import Server
    from retriever.serve.service import Service
    from retriever.vlm.model import load_vlm
    from tests.tiny_vlm import build_idefics3

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's ops are microseconds long: threads only wait on each other
    vlm = load_vlm(str(build_idefics3(tmp_path / "tiny-vlm")), device="cpu", max_image_tokens=64)
    generated: list[str] = []
    generate = vlm.generate

    def generate_and_cite(prompts, images, max_new_tokens):
        """The random model's own text (at most 32 tokens), plus a citation of Photo 2: random
        weights never cite, and the page must show which photos an answer cites."""
        texts = [text + " The cat is in photo 2." for text in generate(prompts, images, min(max_new_tokens, 32))]
        generated.extend(texts)
        return texts

    vlm.generate = generate_and_cite
    server = Server(Service(offline_index, encoder=offline_encoder, vlm=vlm), host="127.0.0.1", port=0)
    info = server.start()
    try:
        page = new_page()
        _open(page, info.url)
        page.locator("#ask-form").wait_for()  # a VLM: the ask box shows
        assert page.locator("#answer").is_hidden()
        page.fill("#ask", "Where is the cat?")
        with page.expect_response(lambda r: "/api/ask?" in r.url) as response:
            page.press("#ask", "Enter")
        body = response.value.json()
        page.wait_for_selector(f"#status:has-text('shown to {vlm.model_id}')")
        assert page.locator("#answer").is_visible()
        # the answer is the model's text, shown as text (its random bytes are no markup)
        assert len(generated) == 1 and body["answer"] == generated[0]
        assert page.evaluate("() => document.querySelector('#answer-text').textContent") == generated[0]
        assert page.locator("#answer-text *").count() == 0
        # the 4 photos the model was shown, in order, the cited one (Photo 2) marked
        names = _names(page)
        assert names == [Path(p["path"]).name for p in body["photos"]] and len(names) == 4
        assert names[0] == "chelsea.png"
        cited = page.locator("#results .card.cited .name").all_inner_texts()
        assert cited == [names[1]] and body["citations"] == [2]
        _thumbnails_shown(page)
        shot = _screenshot(page, tmp_path / "ask.png")
        # the cited card's border is painted in the citation colour (#e9a400)
        box = page.locator("#results .card.cited").bounding_box()
        r, g, b = shot.getpixel((int(box["x"] + box["width"] / 2), int(box["y"] + 1)))
        assert r > 200 and 130 < g < 190 and b < 60, (r, g, b)
        page.locator("#results .card.cited").click()  # a photo shown to the model opens in the viewer
        page.wait_for_selector("#viewer[open]")
        assert page.locator("#viewer-title").inner_text() == names[1]
        assert not page.problems, page.problems
    finally:
        server.stop()
        torch.set_num_threads(threads)


def test_a_phone_sized_page(new_page, server_url, tmp_path):
    page = new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2)
    no_overflow = "() => document.documentElement.scrollWidth <= window.innerWidth"
    # the address of a search (as shared) opens on its results
    page.goto(f"{server_url}/?q=a%20cat")
    page.wait_for_selector("#status:has-text('for “a cat”')")
    assert page.input_value("#q") == "a cat" and _names(page)[0] == "chelsea.png"
    assert page.evaluate("() => window.innerWidth") == 390
    assert page.evaluate(no_overflow), page.evaluate("() => document.documentElement.scrollWidth")
    # every card lies within the viewport's width, two to a row
    boxes = [page.locator("#results .card").nth(i).bounding_box() for i in range(4)]
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes), boxes
    assert boxes[0]["y"] == boxes[1]["y"] < boxes[2]["y"] and boxes[1]["x"] > boxes[0]["x"]
    assert boxes[0]["width"] > 120  # not squeezed to slivers
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "1-phone-results.png")
    # typing a search and tapping the button
    page.fill("#q", "a rocket")
    page.tap("#search-form button[type=submit]")
    page.wait_for_selector("#status:has-text('for “a rocket”')")
    assert _names(page)[0] == "rocket.jpg"
    # the filters open within the width
    page.tap("#filters summary")
    page.locator("#filters input[name=format]").wait_for()
    assert page.evaluate(no_overflow)
    filters = page.locator("#filters").bounding_box()
    assert filters["x"] >= 0 and filters["x"] + filters["width"] <= 390
    # the viewer fits the phone's screen
    page.locator("#results .card").first.tap()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => { const i = document.querySelector('#viewer-img');"
                           " return i.complete && i.naturalWidth > 0; }")
    dialog = page.locator("#viewer").bounding_box()
    assert dialog["x"] >= 0 and dialog["x"] + dialog["width"] <= 390, dialog
    assert page.evaluate("() => { const v = document.querySelector('#viewer'); return v.scrollWidth <= v.clientWidth; }")
    for selector in ("#viewer-img", "#more", "#viewer-close"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    _screenshot(page, tmp_path / "2-phone-viewer.png")
    page.tap("#viewer-close")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    assert page.evaluate(no_overflow)
    assert not page.problems, page.problems


# -- text in photos -----------------------------------------------------------------------------------

# Written straight into a copy of the offline index (no OCR model runs here), in each photo's own
# pixels: a slanted line, a line that looks like markup (text from photos is untrusted), a square
# photo (letterboxed in a short viewer) and one read without text.
PHOTO_TEXT = {
    "coffee.jpg": [("INVOICE 2023-0471", [[40, 30], [300, 42], [298, 82], [38, 70]]),
                   ("<img src=x onerror=window.pwned=1>", [[40, 300], [400, 300], [400, 340], [40, 340]])],
    "astronaut.jpg": [("NASA", [[300, 200], [420, 200], [420, 250], [300, 250]])],
    "chelsea.png": [],
}


@pytest.fixture(scope="module")
def text_server_url(tmp_path_factory, offline_index, offline_encoder):
    """A server on a copy of the offline index in which PHOTO_TEXT was read."""
    pytest.importorskip("fastapi")
    from retriever.index import Index
    from retriever.ocr import squash_lines
    from retriever.serve.server import Server
    from retriever.serve.service import Service
    from retriever.store.ocr import write_texts

    home = tmp_path_factory.mktemp("text-home")
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("*.lock", "serve.json"))
    index = Index.open(home, "default")
    rows = []
    for name, lines in PHOTO_TEXT.items():
        row = index.catalog.find_by_path(str(PHOTOS / name))
        stored = [{"text": text, "score": 0.98, "quad": quad, "box": [*quad[0], *quad[2]]} for text, quad in lines]
        texts = [text for text, _ in lines]
        rows.append((row["id"], row["fingerprint"], stored, "\n".join(texts), squash_lines(texts)))
    assert write_texts(index.catalog, rows, "test-engine 1", "2024-01-02T03:04:05+00:00") == len(rows)
    server = Server(Service(index, encoder=offline_encoder), host="127.0.0.1", port=0)
    info = server.start()
    yield info.url
    server.stop()
    index.close()


def _viewer_image_shown(page) -> None:
    page.wait_for_function("() => { const i = document.querySelector('#viewer-img');"
                           " return i.complete && i.naturalWidth > 0; }")


def _check_boxes(page, name: str) -> dict:
    """Each line's box is drawn where its quad lies on the photo as shown (scaled, centred: the
    image is fitted with object-fit: contain). Returns the shown image's box."""
    from PIL import Image

    width, height = Image.open(PHOTOS / name).size
    page.mouse.move(990, 5)  # off the photo: a box under the pointer (where the card was clicked) is drawn thicker
    assert page.locator("#viewer-boxes .hot").count() == 0
    shown = page.locator("#viewer-img").bounding_box()
    scale = min(shown["width"] / width, shown["height"] / height)
    left = shown["x"] + (shown["width"] - width * scale) / 2
    top = shown["y"] + (shown["height"] - height * scale) / 2
    polygons = page.locator("#viewer-boxes polygon")
    assert polygons.count() == len(PHOTO_TEXT[name])
    for n, (_, quad) in enumerate(PHOTO_TEXT[name]):
        drawn = polygons.nth(n).bounding_box()
        xs, ys = [x for x, _ in quad], [y for _, y in quad]
        # centre and size (the box of a drawn polygon holds its 2 px stroke too)
        expected = (left + (min(xs) + max(xs)) / 2 * scale, top + (min(ys) + max(ys)) / 2 * scale,
                    (max(xs) - min(xs)) * scale, (max(ys) - min(ys)) * scale)
        got = (drawn["x"] + drawn["width"] / 2, drawn["y"] + drawn["height"] / 2, drawn["width"], drawn["height"])
        assert all(abs(a - b) <= tolerance for a, b, tolerance in zip(got, expected, (1, 1, 3, 3))), \
            (name, n, got, expected)
    return shown


def test_text_in_photos_search_viewer_and_boxes(new_page, text_server_url, tmp_path):
    page = new_page()
    _open(page, text_server_url)
    # the text box alone, with the search box empty: the photos whose text contains it
    page.fill("#text", "0471")
    page.press("#text", "Enter")
    page.wait_for_selector("#status:has-text('by the text in them')")
    assert page.locator("#status").inner_text() == "1 results by the text in them (text contains '0471')"
    assert _names(page) == ["coffee.jpg"] and page.url.endswith("/?text=0471")
    _thumbnails_shown(page)

    # the viewer: the lines as text (markup in a photo stays text), their boxes over the photo
    page.locator("#results .card").first.click()
    page.wait_for_selector("#viewer[open]")
    _viewer_image_shown(page)
    assert page.locator("#viewer-text-section").is_visible()
    lines = [text for text, _ in PHOTO_TEXT["coffee.jpg"]]
    assert page.evaluate("() => document.querySelector('#viewer-text').textContent") == "\n".join(lines)
    assert page.locator("#viewer-text .line").all_inner_texts() == lines
    assert page.locator("#viewer img").count() == 1 and page.locator("#viewer-text *:not(.line)").count() == 0
    assert page.evaluate("() => window.pwned") is None
    _check_boxes(page, "coffee.jpg")
    # hovering a line lights its box, and hovering a box its line
    page.hover("#viewer-text .line >> nth=1")
    assert page.locator("#viewer-boxes polygon.hot").get_attribute("data-line") == "1"
    assert page.locator("#viewer-text .line.hot").inner_text() == lines[1]
    page.hover("#viewer-boxes polygon >> nth=0")
    assert page.locator("#viewer-text .line.hot").inner_text() == lines[0]
    assert page.locator("#viewer-boxes polygon.hot").count() == 1
    page.mouse.move(990, 790)
    assert page.locator(".hot").count() == 0
    shot = _screenshot(page, tmp_path / "1-text-boxes.png")
    box = page.locator("#viewer-boxes polygon").nth(1).bounding_box()  # its top edge: the box colour
    r, g, b = shot.getpixel((int(box["x"] + box["width"] / 2), int(round(box["y"]))))
    assert r > 200 and g > 150 and b < 110, (r, g, b)
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")

    # a square photo in a short window: fitted by height, the boxes follow it into the middle
    page.set_viewport_size({"width": 1000, "height": 500})
    page.fill("#q", "an astronaut")
    page.fill("#text", "nasa")
    page.press("#q", "Enter")
    page.wait_for_selector("#status:has-text('for “an astronaut” (text contains')")
    assert _names(page) == ["astronaut.jpg"] and "?q=an%20astronaut&text=nasa" in page.url
    page.locator("#results .card").first.click()
    page.wait_for_selector("#viewer[open]")
    _viewer_image_shown(page)
    shown = _check_boxes(page, "astronaut.jpg")
    assert shown["width"] > shown["height"] + 50  # letterboxed: the case the centring is for
    _screenshot(page, tmp_path / "2-letterboxed.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")

    # photos without text: read and none found, or not read yet (asked for, none shown)
    page.set_viewport_size({"width": 1000, "height": 800})
    page.fill("#text", "")
    _search(page, "a cat", "for “a cat”")
    assert _names(page)[0] == "chelsea.png"
    page.locator("#results .card").first.click()
    page.wait_for_selector("#viewer[open]")
    assert page.locator("#viewer-text-section").is_hidden() and page.locator("#viewer-boxes polygon").count() == 0
    unread = next(i for i, n in enumerate(_names(page)) if n not in PHOTO_TEXT)
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    with page.expect_response(lambda r: r.url.endswith("/text")) as response:
        page.locator("#results .card").nth(unread).click()
    page.wait_for_selector("#viewer[open]")
    assert response.value.json()["read"] is False
    assert page.locator("#viewer-text-section").is_hidden() and page.locator("#viewer-boxes polygon").count() == 0
    # a text that cannot match: the server's one-line error, shown as one
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    page.fill("#text", "--")
    page.press("#text", "Enter")
    page.wait_for_selector("#status.error")
    assert "no letter or digit" in page.locator("#status").inner_text()
    page.problems[:] = [p for p in page.problems if "status of 4" not in p]
    assert not page.problems, page.problems


# -- region search: where a photo matched, and a part of a photo as the query -------------------------


@pytest.fixture(scope="module")
def region_server_url(tmp_path_factory, offline_index, offline_encoder):
    """A server on a copy of the offline index whose first few photos (by id: astronaut.jpg...)
    have region vectors: cheap, and enough for region hits."""
    pytest.importorskip("fastapi")
    from retriever.index import Index
    from retriever.regions import run_regions
    from retriever.serve.server import Server
    from retriever.serve.service import Service

    home = tmp_path_factory.mktemp("region-home")
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("*.lock", "serve.json"))
    index = Index.open(home, "default")
    index.acquire_lock()
    assert run_regions(index, offline_encoder, limit=3).photos == 3
    index.release_lock()
    server = Server(Service(index, encoder=offline_encoder), host="127.0.0.1", port=0)
    info = server.start()
    yield info.url
    server.stop()
    index.close()


def _on_screen(shown: dict, size: tuple[float, float], box, fit: str) -> tuple[float, float, float, float]:
    """Where box (the photo's pixels) lies on the screen when the photo (size) is fitted into the
    element box `shown` as object-fit `fit` (contain or cover, centred), clipped to the element."""
    width, height = size
    scale = (min if fit == "contain" else max)(shown["width"] / width, shown["height"] / height)
    left = shown["x"] + (shown["width"] - width * scale) / 2
    top = shown["y"] + (shown["height"] - height * scale) / 2
    x0, x1 = (min(max(left + v * scale, shown["x"]), shown["x"] + shown["width"]) for v in (box[0], box[2]))
    y0, y1 = (min(max(top + v * scale, shown["y"]), shown["y"] + shown["height"]) for v in (box[1], box[3]))
    return x0, y0, x1, y1


def _drawn_at(drawn: dict, expected, tolerance: float = 3) -> bool:
    """A drawn polygon's box (its stroke included) against the expected edges."""
    got = (drawn["x"], drawn["y"], drawn["x"] + drawn["width"], drawn["y"] + drawn["height"])
    return all(abs(a - b) <= tolerance for a, b in zip(got, expected))


def test_region_boxes_in_the_grid_and_viewer_and_a_dragged_part_as_the_query(new_page, region_server_url, tmp_path):
    page = new_page()
    _open(page, region_server_url)
    with page.expect_response(lambda r: "/api/search?" in r.url) as response:
        _search(page, "a rocket", "for “a rocket”")
    found = response.value.json()["results"]
    regions = [n for n, h in enumerate(found) if h["region"]]
    assert regions, [(h["path"], h["box"]) for h in found]  # astronaut.jpg: the shuttle, top right
    _thumbnails_shown(page)
    # the grid: a box over each thumbnail where a part matched (the square thumbnail crops the photo)
    assert page.locator("#results svg.region").count() == len(regions)
    n = regions[0]
    hit = found[n]
    card = page.locator("#results .card").nth(n)
    assert "a part of it matched" in card.get_attribute("aria-label")
    expected = _on_screen(card.locator("img").bounding_box(), (hit["width"], hit["height"]), hit["box"], "cover")
    assert _drawn_at(card.locator("svg.region polygon").bounding_box(), expected), expected
    shot = _screenshot(page, tmp_path / "1-region-grid.png")
    r, g, b = shot.getpixel((int((expected[0] + expected[2]) / 2), int(expected[1]) + 1))  # top edge, inside
    assert r > 200 and g < 120 and b > 160, (r, g, b)

    # the viewer draws it too, where it lies on the photo as shown (contain, centred)
    card.click()
    page.wait_for_selector("#viewer[open]")
    _viewer_image_shown(page)
    assert page.locator("#viewer-boxes polygon.region").count() == 1
    meta = dict(zip(page.locator("#viewer-meta dt").all_inner_texts(), page.locator("#viewer-meta dd").all_inner_texts()))
    x0, y0, x1, y1 = (round(v) for v in hit["box"])
    assert meta["matched"] == f"a part: x {x0}–{x1}, y {y0}–{y1}"
    shown = page.locator("#viewer-img").bounding_box()
    size = (hit["width"], hit["height"])
    expected = _on_screen(shown, size, hit["box"], "contain")
    assert _drawn_at(page.locator("#viewer-boxes polygon.region").bounding_box(), expected), expected
    _screenshot(page, tmp_path / "2-region-viewer.png")
    # the keys still step through the results, and the box follows the photo shown
    page.keyboard.press("ArrowRight" if n + 1 < len(found) else "ArrowLeft")
    other = found[n + 1 if n + 1 < len(found) else n - 1]
    assert page.locator("#viewer-boxes polygon.region").count() == (1 if other["region"] else 0)
    page.keyboard.press("ArrowLeft" if n + 1 < len(found) else "ArrowRight")
    assert page.locator("#viewer-title").inner_text() == Path(hit["path"]).name

    # drag a rectangle over the photo: photos with something like that part
    part = (0.2 * size[0], 0.25 * size[1], 0.7 * size[0], 0.8 * size[1])
    x0, y0, x1, y1 = _on_screen(shown, size, part, "contain")
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
    assert page.locator("#viewer-select").is_visible()
    page.mouse.move(x1, y1, steps=3)
    with page.expect_response(lambda r: "/api/similar?" in r.url) as response:
        page.mouse.up()
    body = response.value.json()
    assert all(abs(a - b) <= 2 / min(shown["width"] / size[0], shown["height"] / size[1]) + 1
               for a, b in zip(body["box"], part)), (body["box"], part)
    name = Path(hit["path"]).name
    page.wait_for_selector(f"#status:has-text('like a part of {name}')")
    assert page.locator("#viewer[open]").count() == 0 and page.locator("#viewer-select").is_hidden()
    assert _names(page) == [Path(h["path"]).name for h in body["results"]] and name not in _names(page)
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "3-like-a-part.png")

    # a click on the photo is no rectangle: nothing searched, the viewer stays
    page.locator("#results .card").first.click()
    page.wait_for_selector("#viewer[open]")
    _viewer_image_shown(page)
    box = page.locator("#viewer-img").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert page.locator("#viewer[open]").count() == 1 and page.locator("#viewer-select").is_hidden()
    assert not page.problems, page.problems


def test_a_part_dragged_out_with_a_finger(new_page, region_server_url):
    page = new_page(has_touch=True)
    _open(page, region_server_url)
    _search(page, "a cat", "for “a cat”")
    page.locator("#results .card").first.click()
    page.wait_for_selector("#viewer[open]")
    _viewer_image_shown(page)
    shown = page.locator("#viewer-img").bounding_box()
    x, y = shown["x"] + shown["width"] / 2, shown["y"] + shown["height"] / 2
    cdp = page.context.new_cdp_session(page)
    with page.expect_response(lambda r: "/api/similar?" in r.url) as response:
        for kind, dx in (("touchStart", 0), ("touchMove", 30), ("touchMove", 60), ("touchEnd", None)):
            points = [] if dx is None else [{"x": x + dx, "y": y + dx}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
    x0, y0, x1, y1 = response.value.json()["box"]
    assert x1 > x0 and y1 > y0
    page.wait_for_selector("#status:has-text('like a part of chelsea.png')")
    assert not page.problems, page.problems


# -- teaching a concept: "yes, this" / "not this" on the results ----------------------------------------


@pytest.fixture
def concept_server_url(offline_copy, offline_encoder):
    """A server on a copy of the offline index: marks write concepts into it."""
    pytest.importorskip("fastapi")
    from retriever.index import Index
    from retriever.serve.server import Server
    from retriever.serve.service import Service

    index = Index.open(offline_copy, "default")
    server = Server(Service(index, encoder=offline_encoder), host="127.0.0.1", port=0)
    info = server.start()
    yield info.url
    server.stop()
    index.close()


def _card_state(page, name: str) -> list:
    """[card classes marked-yes/-no, aria-pressed of "yes, this", of "not this"] of photo `name`."""
    return page.evaluate(
        """(name) => { const li = [...document.querySelectorAll('#results li')]
             .find((l) => l.querySelector('.name').textContent === name);
           const card = li.querySelector('.card');
           return [card.classList.contains('marked-yes'), card.classList.contains('marked-no'),
                   li.querySelector('.marks .yes').getAttribute('aria-pressed'),
                   li.querySelector('.marks .no').getAttribute('aria-pressed')]; }""", name)


def test_yes_this_and_not_this_teach_a_concept_and_rerank(new_page, concept_server_url, tmp_path):
    page = new_page()
    _open(page, concept_server_url)
    _search(page, "a cat", "for “a cat”")
    before = _names(page)
    # without a concept name, a mark says what to do first
    page.get_by_role("button", name="yes, this: chelsea.png").click()
    page.wait_for_selector("#status.error:has-text('name a concept first')")
    assert page.evaluate("() => document.activeElement.id") == "concept"
    page.fill("#concept", "kitty")
    page.press("#concept", "Tab")  # change: its marks are loaded (none: a new concept)
    page.wait_for_selector("#concept-info:has-text('new')")
    # "yes, this" on the cat: stored, and the page shows the concept's ranking with the cat marked
    page.get_by_role("button", name="yes, this: chelsea.png").click()
    page.wait_for_selector("#status:has-text('marked chelsea.png “yes, this” for “kitty” (1 yes, 0 no)')")
    assert page.input_value("#q") == "concept:kitty"
    api = page.request.get(f"{concept_server_url}/api/search?q=concept:kitty&k=24").json()
    assert _names(page) == [Path(r["path"]).name for r in api["results"]] != before
    assert _card_state(page, "chelsea.png") == [True, False, "true", "false"]
    # "not this" on another photo: refitted, re-ranked, that photo shown as marked no
    other = next(n for n in _names(page)[:4] if n != "chelsea.png")
    scores = _scores(page)
    page.get_by_role("button", name=f"not this: {other}").click()
    page.wait_for_selector(f"#status:has-text('marked {other} “not this” for “kitty” (1 yes, 1 no)')")
    assert _scores(page) != scores
    assert _card_state(page, other) == [False, True, "false", "true"]
    assert _card_state(page, "chelsea.png") == [True, False, "true", "false"]
    # the concept is listed; "not this" again takes the mark back
    assert page.evaluate("() => [...document.querySelectorAll('#concept-names option')].map((o) => o.value)") == ["kitty"]
    page.get_by_role("button", name=f"not this: {other}").click()
    page.wait_for_selector("#status:has-text('took back the mark of')")
    assert _card_state(page, other) == [False, False, "false", "false"]
    # only photos it accepts: the concept= filter on the search
    page.check("#concept-only")
    page.wait_for_selector("#status:has-text('(concept kitty)')")
    accepted = page.request.get(f"{concept_server_url}/api/search?q=concept:kitty&concept=kitty&k=24").json()
    assert _names(page) == [Path(r["path"]).name for r in accepted["results"]]
    _thumbnails_shown(page)
    _screenshot(page, tmp_path / "1-concept-marked.png")
    assert not page.problems, page.problems
    # "Add example photo…": a file as a "shows it" example, then the concept's ranking as after a mark
    assert page.input_value("#concept-file-label") == "yes"
    page.set_input_files("#concept-file", str(PHOTOS / "chelsea.png"))
    page.wait_for_selector("#status:has-text('added chelsea.png as “shows it” for “kitty” (2 yes, 0 no)')")
    assert page.text_content("#concept-info") == "2 yes, 0 no"
    shown = page.request.get(f"{concept_server_url}/api/concepts/kitty").json()
    assert shown["positives"] == 2
    assert [e["source"] for e in shown["examples"] if e["id"] is None] == ["upload"]
    # a file that is not an image: the server's 415, on one line in the status
    page.set_input_files("#concept-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_selector("#status.error:has-text('notes.txt: not an image upload (text/plain)')")
    # "Delete concept": asks first (dismissed: kept), then deletes; the field, marks and picker cleared
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#concept-delete")
    assert page.request.get(f"{concept_server_url}/api/concepts").json()["count"] == 1
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Delete concept").click()
    page.wait_for_selector("#status:has-text('deleted the concept “kitty”')")
    assert asked == ["Delete the concept “kitty” and its 2 examples? This cannot be undone."]
    assert page.request.get(f"{concept_server_url}/api/concepts").json() == {"count": 0, "concepts": []}
    assert page.input_value("#concept") == ""
    assert page.evaluate("() => document.querySelectorAll('#concept-names option').length") == 0
    assert page.locator(".card.marked-yes, .card.marked-no, .marks [aria-pressed=true]").count() == 0
    assert page.is_disabled("#concept-delete")
    page.problems[:] = [p for p in page.problems if "status of 4" not in p]  # the 415's console line
    assert not page.problems, page.problems
