"""Output a person looks at: thumbnails, terminal image protocols (kitty, iTerm2, sixel) and the
HTML results page. Every encoding is decoded back here and compared with the image it came from."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import threading
import urllib.parse
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from retriever.render import (
    PreviewError,
    RenderError,
    ThumbnailError,
    choose_protocol,
    detect_protocol,
    file_url,
    hit_line,
    html_page,
    iterm2_image,
    kitty_image,
    multiplexer,
    preview_lines,
    query_device_attributes,
    sixel_image,
    thumbnail,
    tmux_passthrough,
    write_html,
)
from retriever.render.sixel import encode_indexed
from retriever.render.thumbnails import REGION_COLOUR, draw_region
from retriever.search import Hit
from tests.conftest import PHOTOS

# -- helpers: decoders written from the specs, independent of the encoders ------------------------


def decode_sixel(text: str) -> tuple[np.ndarray, dict[int, tuple[int, int, int]], tuple[int, int]]:
    """-> (register painted at each pixel, -1 where none; registers as RGB percent; raster size)."""
    match = re.fullmatch(r'\x1bP([0-9;]*)q"1;1;(\d+);(\d+)(.*)\x1b\\', text, flags=re.S)
    assert match, "not a DCS q ... ST string with raster attributes"
    width, height = int(match.group(2)), int(match.group(3))
    body = match.group(4)
    pixels = np.full((height + 5, width), -1, dtype=np.int32)
    registers: dict[int, tuple[int, int, int]] = {}
    x = band = 0
    color = None
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "#":
            m = re.match(r"#(\d+)(?:;2;(\d+);(\d+);(\d+))?", body[i:])
            assert m, body[i : i + 20]
            if m.group(2) is not None:
                registers[int(m.group(1))] = tuple(int(m.group(k)) for k in (2, 3, 4))
            else:
                color = int(m.group(1))
                assert color in registers, f"register {color} used before it is defined"
            i += m.end()
            continue
        repeat = 1
        if ch == "!":
            m = re.match(r"!(\d+)([?-~])", body[i:])
            assert m
            repeat, ch = int(m.group(1)), m.group(2)
            i += m.end() - 1
        if ch == "$":
            x = 0
        elif ch == "-":
            x, band = 0, band + 1
        else:
            assert "?" <= ch <= "~", repr(ch)
            bits = ord(ch) - 63
            for _ in range(repeat):
                for row in range(6):
                    if bits & (1 << row):
                        assert color is not None
                        assert pixels[band * 6 + row, x] == -1, "pixel painted twice"
                        pixels[band * 6 + row, x] = color
                x += 1
            assert x <= width, "sixels past the raster width"
        i += 1
    return pixels[:height], registers, (width, height)


def kitty_chunks(text: str) -> list[tuple[dict[str, str], str]]:
    parts = re.findall(r"\x1b_G([^;\x1b]*);([^\x1b]*)\x1b\\", text)
    assert "".join(f"\x1b_G{k};{p}\x1b\\" for k, p in parts) == text, "stray bytes between escape codes"
    return [(dict(kv.split("=", 1) for kv in keys.split(",")), payload) for keys, payload in parts]


def png_pixels(data: bytes) -> tuple[Image.Image, np.ndarray]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img, np.asarray(img.convert("RGB"))


class Cards(HTMLParser):
    """Collects the result cards of a page, every start tag, and every URL the page refers to."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cards: list[dict] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self._in_path = 0
        self._in_meta = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [attrs[a] for a in ("src", "href") if a in attrs]
        if tag == "article":
            self.cards.append({"classes": attrs["class"].split(), "rank": int(attrs["data-rank"]),
                               "score": float(attrs["data-score"]), "path": "", "imgs": [], "meta": {},
                               "links": [], "text": ""})
        elif self.cards:
            card = self.cards[-1]
            if tag == "img":
                card["imgs"].append(attrs)
            if tag == "a":
                card["links"].append(attrs["href"])
            if tag == "p" and attrs.get("class") == "path":
                self._in_path = 1
            if tag in ("dt", "dd"):
                self._in_meta = tag

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_path = 0
        if tag in ("dt", "dd"):
            self._in_meta = None

    def handle_data(self, data):
        if not self.cards:
            return
        card = self.cards[-1]
        card["text"] += data
        if self._in_path:
            card["path"] += data
        if self._in_meta == "dt":
            card["_key"] = data
        elif self._in_meta == "dd":
            card["meta"][card.pop("_key")] = data


def parse(page: str) -> Cards:
    parser = Cards()
    parser.feed(page)
    parser.close()
    return parser


def data_uri_image(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    assert img.format == "JPEG"
    return img


def hit(rank, path, score=0.5, **meta) -> Hit:
    return Hit(rank=rank, score=score, id=rank, path=str(path), meta=meta)


def make_video(path, colors=((220, 30, 30), (30, 30, 220)), seconds_each=1, fps=5, size=(64, 48)):
    pytest.importorskip("av")
    from tests.test_video import make_video as encode_video

    return encode_video(path, scenes=colors, seconds_each=seconds_each, fps=fps, size=size)


# -- thumbnails -----------------------------------------------------------------------------------


def test_thumbnail_fits_the_box_and_keeps_the_aspect_ratio():
    img = thumbnail(str(PHOTOS / "chelsea.png"), max_side=128)  # 451 x 300
    assert img.mode == "RGB" and max(img.size) == 128
    assert abs(img.width / img.height - 451 / 300) < 0.01
    small = thumbnail(str(PHOTOS / "chelsea.png"), max_side=1000)
    assert small.size == (451, 300)  # never enlarged


def test_thumbnail_goes_through_the_safe_decoder_exif_orientation_applied(tmp_path):
    # Stored 60 wide x 20 high, EXIF orientation 6: shown rotated, 20 wide x 60 high.
    stored = Image.new("RGB", (60, 20), (200, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    assert thumbnail(str(tmp_path / "rotated.jpg"), max_side=30).size == (10, 30)


def test_thumbnail_failures_are_typed_errors_with_a_short_reason(tmp_path):
    with pytest.raises(ThumbnailError) as gone:
        thumbnail(str(tmp_path / "deleted.jpg"))
    assert "No such file" in gone.value.reason and isinstance(gone.value, RenderError)
    (tmp_path / "notes.jpg").write_text("not a photo at all")
    with pytest.raises(ThumbnailError) as text:
        thumbnail(str(tmp_path / "notes.jpg"))
    assert "text file" in text.value.reason


def test_thumbnail_of_a_video_frame_is_the_frame_at_its_timestamp(tmp_path):
    video = make_video(tmp_path / "clip.mp4")  # 1 s red, then 1 s blue
    red = np.asarray(thumbnail(str(video), frame_ms=0, max_side=32)).reshape(-1, 3).mean(axis=0)
    blue = np.asarray(thumbnail(str(video), frame_ms=1000, max_side=32)).reshape(-1, 3).mean(axis=0)
    assert red[0] > 150 > red[2] and blue[2] > 150 > blue[0]
    assert thumbnail(str(video), frame_ms=1000, max_side=32).size == (32, 24)
    with pytest.raises(ThumbnailError, match="shorter"):
        thumbnail(str(video), frame_ms=60_000)
    with pytest.raises(ThumbnailError):
        thumbnail(str(tmp_path / "gone.mp4"), frame_ms=0)


# -- kitty ----------------------------------------------------------------------------------------


def test_kitty_sends_the_png_in_chunks_of_at_most_4096_with_m_flags():
    img = thumbnail(str(PHOTOS / "coffee.jpg"), max_side=200)
    chunks = kitty_chunks(kitty_image(img))
    assert len(chunks) > 2
    first_keys = chunks[0][0]
    assert (first_keys["a"], first_keys["f"], first_keys["q"]) == ("T", "100", "2")
    assert [keys["m"] for keys, _ in chunks] == ["1"] * (len(chunks) - 1) + ["0"]
    assert all(keys.keys() == {"m"} for keys, _ in chunks[1:])
    assert all(len(payload) <= 4096 for _, payload in chunks)
    assert all(len(payload) % 4 == 0 for _, payload in chunks[:-1])  # no padding mid-stream
    png, pixels = png_pixels(base64.b64decode("".join(p for _, p in chunks), validate=True))
    assert png.size == img.size and np.array_equal(pixels, np.asarray(img))


def test_kitty_small_image_is_one_chunk():
    chunks = kitty_chunks(kitty_image(Image.new("RGB", (3, 2), (1, 2, 3))))
    assert len(chunks) == 1 and chunks[0][0]["m"] == "0"


# -- iTerm2 ---------------------------------------------------------------------------------------


def test_iterm2_inline_file_with_its_size_and_the_image():
    img = thumbnail(str(PHOTOS / "rocket.jpg"), max_side=120)
    match = re.fullmatch(r"\x1b\]1337;File=([^:]*):([A-Za-z0-9+/=]*)\x07", iterm2_image(img))
    assert match
    args = dict(kv.split("=", 1) for kv in match.group(1).split(";"))
    data = base64.b64decode(match.group(2), validate=True)
    assert args["inline"] == "1" and args["preserveAspectRatio"] == "1"
    assert int(args["size"]) == len(data)
    assert (args["width"], args["height"]) == (f"{img.width}px", f"{img.height}px")
    png, pixels = png_pixels(data)
    assert png.size == img.size and np.array_equal(pixels, np.asarray(img))


# -- sixel ----------------------------------------------------------------------------------------

# RGB values that are whole percentages (k * 2.55 for k a multiple of 20), so that the round
# trip through sixel's percent colour registers is exact.
EXACT = np.array([[0, 0, 0], [255, 255, 255], [51, 102, 153], [204, 0, 51], [0, 153, 0]], dtype=np.uint8)


def test_sixel_round_trip_reproduces_every_pixel_of_a_small_image():
    indices = np.random.default_rng(7).integers(0, len(EXACT), size=(13, 7))  # 13 rows: 2 bands + 1 row
    img = Image.fromarray(EXACT[indices])
    text = sixel_image(img)
    assert text.startswith("\x1bP") and text.endswith("\x1b\\") and text.index("q") < text.index('"')
    painted, registers, size = decode_sixel(text)
    assert size == (7, 13)
    assert (painted >= 0).all()  # every pixel painted exactly once (the decoder checks "once")
    decoded = np.array([[[round(v * 255 / 100) for v in registers[r]] for r in row] for row in painted])
    assert np.array_equal(decoded, EXACT[indices])


def test_sixel_encoding_of_given_palette_indices_is_exact():
    indices = np.random.default_rng(3).integers(0, 4, size=(13, 7)).astype(np.uint8)
    indices[:, 0] = 9  # a register number that is not the position in a short palette
    palette = [0] * (3 * 10)
    palette[27:30] = [255, 0, 0]
    painted, registers, _ = decode_sixel(encode_indexed(indices, palette))
    assert np.array_equal(painted, indices)
    assert set(registers) == set(np.unique(indices).tolist())  # only the registers used
    assert registers[9] == (100, 0, 0)


def test_sixel_runs_are_run_length_encoded():
    text = sixel_image(Image.new("RGB", (40, 12), (255, 255, 255)))
    assert "!40~" in text  # 40 columns of a full six-pixel band, twice
    painted, _, size = decode_sixel(text)
    assert size == (40, 12) and (painted >= 0).all()
    assert not text[:-2].endswith("-")  # no graphics newline after the last band


def test_sixel_of_a_photo_decodes_close_to_the_photo():
    img = thumbnail(str(PHOTOS / "astronaut.jpg"), max_side=96)
    text = sixel_image(img)
    painted, registers, size = decode_sixel(text)
    assert size == img.size and (painted >= 0).all()
    assert len(registers) <= 256
    lut = np.zeros((256, 3))
    for r, rgb in registers.items():
        lut[r] = np.array(rgb) * 255 / 100
    error = np.abs(lut[painted] - np.asarray(img, dtype=float)).mean()
    assert error < 8  # dithering to 256 colours; a wrong band or offset gives > 30


# -- choosing a protocol --------------------------------------------------------------------------


@pytest.mark.parametrize("environ,expected", [
    ({"TERM": "xterm-kitty"}, "kitty"),
    ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, "kitty"),
    ({"TERM": "xterm-ghostty", "TERM_PROGRAM": "ghostty"}, "kitty"),
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "ghostty"}, "kitty"),
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "iterm2"),
    ({"TERM": "wezterm"}, "iterm2"),
    ({"TERM": "xterm-256color", "WEZTERM_PANE": "0"}, "iterm2"),
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, "iterm2"),
    ({"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, "iterm2"),  # over ssh
    ({"TERM": "foot"}, "sixel"),
    ({"TERM": "foot-extra"}, "sixel"),
    ({"TERM": "mlterm"}, "sixel"),
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "mintty"}, "sixel"),
    ({"TERM": "xterm-256color", "KONSOLE_VERSION": "230805"}, "sixel"),
    ({"TERM": "xterm-256color", "KONSOLE_VERSION": "211203"}, None),  # before 22.04
    ({"TERM": "xterm-256color"}, None),  # xterm, VTE, Windows Terminal: left to the probe
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "Apple_Terminal"}, None),
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "vscode"}, None),
    ({}, None),
    ({"TERM": "dumb", "KITTY_WINDOW_ID": "1"}, None),
    ({"TERM": "tmux-256color", "TMUX": "/tmp/tmux-0/default,1,0", "KITTY_WINDOW_ID": "1"}, None),
    ({"TERM": "screen-256color", "TERM_PROGRAM": "iTerm.app", "LC_TERMINAL": "iTerm2"}, None),
    ({"TERM": "xterm-kitty", "ZELLIJ": "0"}, None),
    ({"TERM": "screen", "STY": "1234.pts-0.host", "TERM_PROGRAM": "WezTerm"}, None),
])
def test_detection_matrix(environ, expected):
    assert detect_protocol(environ, is_tty=True) == expected


def test_nothing_is_detected_when_output_is_not_a_terminal():
    assert detect_protocol({"TERM": "xterm-kitty", "KITTY_WINDOW_ID": "1"}, is_tty=False) is None
    assert choose_protocol("auto", {"TERM": "xterm-kitty", "RETRIEVER_PREVIEW": "sixel"}, False) is None


def test_multiplexers_are_recognised():
    assert multiplexer({"TMUX": "/tmp/x,1,0", "TERM": "screen-256color"}) == "tmux"
    assert multiplexer({"TERM": "tmux-256color"}) == "tmux"
    assert multiplexer({"STY": "1.pts"}) == "screen"
    assert multiplexer({"ZELLIJ": "0"}) == "zellij"
    assert multiplexer({"TERM": "xterm-kitty"}) is None


def test_choose_protocol_explicit_env_off_and_probe():
    kitty = {"TERM": "xterm-kitty"}
    plain = {"TERM": "xterm-256color"}
    assert choose_protocol("sixel", kitty, is_tty=True) == "sixel"  # explicit wins
    assert choose_protocol("iterm2", {}, is_tty=False) == "iterm2"  # even into a pipe: asked for
    assert choose_protocol("off", kitty, is_tty=True) is None
    assert choose_protocol(None, kitty, is_tty=True) == "kitty"
    assert choose_protocol("auto", {**plain, "RETRIEVER_PREVIEW": "iterm2"}, True) == "iterm2"
    assert choose_protocol("auto", {**kitty, "RETRIEVER_PREVIEW": "off"}, True) is None
    assert choose_protocol("auto", {**kitty, "RETRIEVER_PREVIEW": "auto"}, True) == "kitty"

    asked = []

    def probe(answer):
        return lambda: asked.append(answer) or answer

    assert choose_protocol("auto", plain, True, probe=probe(True)) == "sixel"
    assert choose_protocol("auto", plain, True, probe=probe(False)) is None
    assert choose_protocol("auto", kitty, True, probe=probe(True)) == "kitty"  # not asked
    assert choose_protocol("auto", {"TERM": "dumb"}, True, probe=probe(True)) is None  # not asked
    assert choose_protocol("auto", plain, False, probe=probe(True)) is None  # not asked
    assert asked == [True, False]

    with pytest.raises(PreviewError, match="choose from auto, kitty, iterm2, sixel, off"):
        choose_protocol("png", plain, True)
    with pytest.raises(PreviewError, match="RETRIEVER_PREVIEW"):
        choose_protocol("auto", {**plain, "RETRIEVER_PREVIEW": "yes"}, True)


@pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals")
@pytest.mark.parametrize("reply,expected", [
    (b"\x1b[?62;4;22c", (62, 4, 22)),  # a sixel terminal (xterm -ti vt340, foot, WT 1.22)
    (b"\x1b[?62;c", (62,)),  # kitty
    (b"\x1b[?6", None),  # cut off: no complete answer in time
])
def test_device_attributes_query_on_a_pseudo_terminal(reply, expected):
    import pty
    import termios

    terminal, program = pty.openpty()  # the terminal side, and the side a program sees
    before = termios.tcgetattr(program)
    seen = []

    def answer():
        seen.append(os.read(terminal, 16))
        os.write(terminal, reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert query_device_attributes(program, timeout=0.3) == expected
        thread.join(1)
        assert seen == [b"\x1b[c"]
        assert termios.tcgetattr(program) == before  # echo and line mode restored
    finally:
        os.close(terminal)
        os.close(program)


@pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals")
@pytest.mark.parametrize("reply,expected", [(b"\x1b[?64;1;4;22c", "True"), (b"\x1b[?62;22c", "False")])
def test_probe_sixel_asks_the_controlling_terminal(reply, expected):
    """A child process whose controlling terminal is a pseudo-terminal we play the terminal of."""
    import fcntl
    import pty
    import select
    import subprocess
    import sys
    import termios

    terminal, program = pty.openpty()

    def take_as_controlling_terminal():  # in the child, after setsid
        fcntl.ioctl(program, termios.TIOCSCTTY, 0)

    code = "from retriever.render import probe_sixel; print(probe_sixel(timeout=5))"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=program, stdout=subprocess.PIPE,
                             start_new_session=True, preexec_fn=take_as_controlling_terminal)
    try:
        os.close(program)
        assert select.select([terminal], [], [], 10)[0], "the child asked nothing"
        assert os.read(terminal, 16) == b"\x1b[c"
        os.write(terminal, reply)
        assert child.communicate(timeout=10)[0].decode().strip() == expected
    finally:
        child.kill()
        os.close(terminal)


# -- one hit in a terminal ------------------------------------------------------------------------


def test_preview_lines_draw_the_image_then_the_text_line():
    h = hit(3, PHOTOS / "coffee.jpg", score=0.28125)
    out = preview_lines(h, "kitty", max_side=64)
    image, line = out.rsplit("\n", 1)
    assert line == f"  3  0.2812  {PHOTOS / 'coffee.jpg'}" == hit_line(h)
    png, _ = png_pixels(base64.b64decode("".join(p for _, p in kitty_chunks(image))))
    assert max(png.size) == 64
    sixel = preview_lines(h, "sixel", max_side=64).split("\n")[0]
    assert decode_sixel(sixel)[2] == (64, 43)


def test_preview_of_a_missing_file_is_the_text_line_and_a_note(tmp_path):
    out = preview_lines(hit(1, tmp_path / "gone.jpg", score=0.5), "iterm2")
    assert "\x1b" not in out
    line, note = out.split("\n")
    assert line == f"  1  0.5000  {tmp_path / 'gone.jpg'}"
    assert note.strip().startswith("(no preview: cannot read: No such file")


def test_preview_of_a_video_frame_shows_its_timestamp(tmp_path):
    video = make_video(tmp_path / "clip.mp4")
    out = preview_lines(hit(1, video, frame_ms=1000), "iterm2", max_side=32)
    assert out.endswith(f"{video}@00:00:01") and out.startswith("\x1b]1337;File=")


def test_a_hostile_file_name_cannot_send_escape_sequences(tmp_path):
    evil = tmp_path / "x\x1b]1337;File=inline=1:AAAA\x07\x1b[2J.jpg"
    shutil.copy(PHOTOS / "coffee.jpg", evil)
    image, line = preview_lines(hit(1, evil), "kitty", max_side=16).rsplit("\n", 1)
    assert "\x1b" not in line and "\x07" not in line and line.endswith("\ufffd[2J.jpg")
    assert len(kitty_chunks(image)) == 1  # our one escape code and nothing else


def test_preview_draws_the_matched_part_on_the_thumbnail():
    # coffee.jpg is 600 x 400; the part that matched: its middle half, each way
    part = hit(1, PHOTOS / "coffee.jpg", width=600, height=400, box=[150, 100, 450, 300], region=True)
    image, line = preview_lines(part, "kitty", max_side=192).rsplit("\n", 1)
    assert line == hit_line(part)
    png, pixels = png_pixels(base64.b64decode("".join(p for _, p in kitty_chunks(image))))
    assert png.size == (192, 128)
    colour = np.all(pixels == REGION_COLOUR, axis=-1)
    ys, xs = np.nonzero(colour)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (48, 144, 32, 96)  # a quarter in, each side
    assert colour[32:35, 48:145].all() and colour[94:97, 48:145].all()  # top and bottom, 3 px
    assert colour[32:97, 48:51].all() and colour[32:97, 142:145].all()  # left and right
    assert not colour[35:94, 51:142].any() and not colour[:30].any()  # the photo inside and around
    # sixel: the same box, in the palette's nearest colour
    painted, registers, size = decode_sixel(preview_lines(part, "sixel", max_side=192).split("\n")[0])
    assert size == (192, 128)
    lut = np.zeros((256, 3))
    for r, rgb in registers.items():
        lut[r] = np.array(rgb) * 255 / 100
    edge = lut[painted[32:35, 48:145]]
    assert np.abs(edge - REGION_COLOUR).max() < 40, edge.mean(axis=(0, 1))
    # the whole photo matched, or a box that cannot be placed: nothing drawn
    for meta in ({"box": [0, 0, 600, 400], "region": False}, {"box": [150, 100, 450, 300], "region": True},
                 {"box": [150, 100, "x", 300], "region": True, "width": 600, "height": 400},
                 {"box": [500, 300, 400, 350], "region": True, "width": 600, "height": 400}):
        image = preview_lines(hit(1, PHOTOS / "coffee.jpg", **meta), "kitty", max_side=192).rsplit("\n", 1)[0]
        _, plain = png_pixels(base64.b64decode("".join(p for _, p in kitty_chunks(image))))
        assert not np.all(plain == REGION_COLOUR, axis=-1).any(), meta
    # a thumbnail far smaller than the photo still gets a visible box (2 px), inside the image
    tiny = draw_region(Image.new("RGB", (40, 30)), (0.5, 0.0, 1.0, 1.0))
    marked = np.all(np.asarray(tiny) == REGION_COLOUR, axis=-1)
    assert marked[:, 20:22].all() and marked[:, 38:40].all() and marked[0:2, 20:].all() and not marked[:, :20].any()


def test_tmux_passthrough_wraps_each_sequence_with_escapes_doubled():
    sequence = kitty_image(thumbnail(str(PHOTOS / "coffee.jpg"), max_side=64))
    wrapped = tmux_passthrough(sequence)
    parts = re.findall(r"\x1bPtmux;(.*?)\x1b\\(?=\x1bPtmux;|$)", wrapped, flags=re.S)
    assert len(parts) == sequence.count("\x1b_G") and all(len(p) < 4200 for p in parts)
    assert "".join(p.replace("\x1b\x1b", "\x1b") for p in parts) == sequence
    assert preview_lines(hit(1, PHOTOS / "coffee.jpg"), "kitty", 64, tmux=True).startswith("\x1bPtmux;\x1b\x1b_G")
    assert preview_lines(hit(1, PHOTOS / "coffee.jpg"), "sixel", 64, tmux=True).startswith("\x1bP0;1;0q")


# -- the HTML page --------------------------------------------------------------------------------


def test_html_page_has_one_card_per_hit_in_order_with_inline_jpeg_thumbnails():
    names = ["chelsea.png", "coffee.jpg", "camera.png"]
    hits = [hit(i + 1, PHOTOS / n, score=0.9 - i / 10, size=12_345, width=451, height=300, format="PNG",
                taken_at="2021-07-04T18:22:05", camera_make="Canon", camera_model="Canon EOS R5",
                gps_lat=48.8583701, gps_lon=-2.2944813) for i, n in enumerate(names)]
    page = html_page(hits, title="retriever: cats", query_description='text "a cat"', thumbnail_side=100)
    doc = parse(page)
    assert [c["path"] for c in doc.cards] == [str(PHOTOS / n) for n in names]
    assert [c["rank"] for c in doc.cards] == [1, 2, 3]
    assert [c["score"] for c in doc.cards] == pytest.approx([0.9, 0.8, 0.7])
    assert "0.9000" in doc.cards[0]["text"]
    for card, name in zip(doc.cards, names):
        (img,) = card["imgs"]
        thumb = data_uri_image(img["src"])
        with Image.open(PHOTOS / name) as original:
            assert max(thumb.size) == 100
            assert abs(thumb.width / thumb.height - original.width / original.height) < 0.02
        assert (int(img["width"]), int(img["height"])) == thumb.size
        assert card["links"][0] == (PHOTOS / name).as_uri()
    meta = doc.cards[0]["meta"]
    assert meta["Dimensions"] == "451 \u00d7 300" and meta["Taken"] == "2021-07-04 18:22:05"
    assert meta["Camera"] == "Canon EOS R5" and meta["File size"] == "12.3 kB"
    assert meta["Location"] == "48.85837\u00b0 N, 2.29448\u00b0 W"
    # Self-contained: every URL is a data URI or a link to a local file; nothing to fetch.
    assert all(u.startswith(("data:image/jpeg;base64,", "file://")) for u in doc.urls)
    assert "script" not in doc.tags and "link" not in doc.tags
    assert "Content-Security-Policy" in page and "<title>retriever: cats</title>" in page


def test_html_escapes_hostile_paths_and_renders_non_utf8_names(tmp_path):
    hostile = tmp_path / '<script>alert("x")<img src=x onerror=alert(1)> &amp; \'quotes\'.jpg'  # no "/" in a name
    shutil.copy(PHOTOS / "coffee.jpg", hostile)
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xff.jpg"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as f:
        f.write((PHOTOS / "rocket.jpg").read_bytes())
    latin = os.fsdecode(raw)  # surrogate escapes in the str, as os.walk gives them
    page = html_page([hit(1, hostile), hit(2, latin)], title="<b>t</b>", query_description="q & <i>")
    doc = parse(page)
    assert "script" not in doc.tags and "b" not in doc.tags and "i" not in doc.tags
    assert doc.cards[0]["path"] == str(hostile)  # shown exactly, as text ("&amp;" included)
    assert [len(card["imgs"]) for card in doc.cards] == [1, 1]  # the thumbnails, no injected <img>
    assert doc.cards[1]["path"] == f"{tmp_path}/caf\ufffd \ufffd.jpg"
    link = doc.cards[1]["links"][0]  # the file's exact bytes, percent-encoded
    assert link.startswith("file:///") and link.endswith("/caf%E9%20%FF.jpg")
    assert urllib.parse.unquote_to_bytes(link[len("file://"):]) == raw
    assert data_uri_image(doc.cards[1]["imgs"][0]["src"]).size == (256, 171)
    page.encode("utf-8")  # no surrogate left anywhere


def test_html_placeholder_card_for_a_file_that_cannot_be_shown(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    hits = [hit(1, PHOTOS / "coffee.jpg"), hit(2, tmp_path / "deleted.jpg"), hit(3, tmp_path / "broken.png")]
    doc = parse(html_page(hits, title="t", query_description="q"))
    assert [("placeholder" in c["classes"], len(c["imgs"])) for c in doc.cards] == [(False, 1), (True, 0), (True, 0)]
    assert "No preview" in doc.cards[1]["text"] and "No such file" in doc.cards[1]["text"]
    assert doc.cards[2]["path"] == str(tmp_path / "broken.png")


def test_html_card_of_a_video_frame_links_to_its_time(tmp_path):
    video = make_video(tmp_path / "clip.mp4")
    doc = parse(html_page([hit(1, video, frame_ms=1000, width=64, height=48)], title="t", query_description="q"))
    (card,) = doc.cards
    assert card["meta"]["Frame at"] == "00:00:01" and "\u25b6 00:00:01" in card["text"]
    assert all(link == video.as_uri() + "#t=1" for link in card["links"])
    assert data_uri_image(card["imgs"][0]["src"]).size == (64, 48)
    assert file_url("/a b/c.mp4", 1500) == "file:///a%20b/c.mp4#t=1.5"


def test_empty_results_page_says_so():
    doc = parse(html_page([], title="t", query_description="q"))
    assert doc.cards == [] and "No results." in html_page([], title="t", query_description="q")


def test_write_html_replaces_the_file_atomically(tmp_path):
    target = tmp_path / "results.html"
    target.write_text("old page")
    write_html(target, "<!doctype html><p>caf\u00e9</p>")
    assert target.read_text(encoding="utf-8") == "<!doctype html><p>caf\u00e9</p>"
    assert os.listdir(tmp_path) == ["results.html"]  # no temporary file left
    with pytest.raises(RenderError, match="cannot write"):
        write_html(tmp_path / "missing-folder" / "r.html", "x")
    with pytest.raises(RenderError, match="folder"):
        write_html(tmp_path, "x")
    assert os.listdir(tmp_path) == ["results.html"]


def test_html_draws_the_matched_part_over_the_thumbnail():
    size = {"width": 600, "height": 400}
    hits = [hit(1, PHOTOS / "coffee.jpg", box=[150, 100, 450, 300.5], region=True, **size),
            hit(2, PHOTOS / "coffee.jpg", box=[0, 0, 600, 400], region=False, **size),
            hit(3, PHOTOS / "coffee.jpg", box=[-20, 380, 90, 460], region=True, **size),  # clipped
            hit(4, PHOTOS / "coffee.jpg", box=[150, 100, 450, 300], region=True),  # no size: no box
            hit(5, PHOTOS / "camera.png")]  # an index without regions
    page = html_page(hits, title="t", query_description="q", thumbnail_side=100)
    cards = re.findall(r'<article .*?</article>', page, flags=re.S)
    assert len(cards) == 5
    regions = [re.findall(r'<span class="region" style="([^"]*)"', card) for card in cards]
    assert regions == [["left: 25.00%; top: 25.00%; width: 50.00%; height: 50.12%"], [],
                       ["left: 0.00%; top: 95.00%; width: 15.00%; height: 5.00%"], [], []]
    # the box lies over the thumbnail: both in a frame of the thumbnail's own size and shape
    frame = re.search(r'<span class="frame" style="([^"]*)"><img [^>]*><span class="region"', cards[0])
    assert frame and frame.group(1) == "width: min(100px, 100.000%); aspect-ratio: 100 / 67"
    assert all('<span class="frame"' in card for card in cards)
    assert "position: relative" in page.split(".frame {", 1)[1].split("}", 1)[0]
    assert "position: absolute" in page.split(".region {", 1)[1].split("}", 1)[0]
    # and in words
    doc = parse(page)
    assert doc.cards[0]["meta"]["Matched"] == "a part: x 150\u2013450, y 100\u2013300"
    assert "Matched" not in doc.cards[1]["meta"] and "Matched" not in doc.cards[4]["meta"]
    assert doc.tags.count("img") == 5 and "script" not in doc.tags
