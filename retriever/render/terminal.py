"""Thumbnails inline in a terminal: which image protocol the terminal speaks, and the escape
sequences of each (kitty, iTerm2, sixel).

Detection reads the environment only (pure, testable) and is deliberately conservative: a
protocol is chosen only where a variable names a terminal known to draw it, and nothing is drawn
when standard output is not a terminal. A wrong guess is still harmless: APC, OSC and DCS strings
a terminal does not understand are swallowed, not shown. For terminals the environment does not
name (xterm built with sixel, GNOME Terminal with a sixel VTE, Windows Terminal >= 1.22 seen from
WSL, tmux >= 3.4 built with sixel), `probe_sixel` asks the terminal itself with a Primary Device
Attributes query; the CLI passes it to `choose_protocol`, which calls it only as a last resort.

Inside tmux, screen or zellij the environment describes the terminal the multiplexer was started
from, perhaps another one, and the multiplexer would not keep a passed-through image anyway (it is
lost at the next redraw): auto-detection trusts no variable there, and only the probe can answer
(tmux built with sixel draws sixel itself). An explicit `--preview kitty|iterm2` inside tmux is
honoured through tmux's passthrough (needs `set -g allow-passthrough on`, tmux >= 3.3).

Where the cursor ends: kitty and iTerm2 leave it on the image's last row, just right of it; sixel
terminals differ (VT340, Windows Terminal: on the last row; xterm, foot: on the row below). Every
image here is followed by a newline, which at worst leaves one blank line, never text over the
picture.
"""

from __future__ import annotations

import base64
import io
import os
import re
from typing import Callable, Mapping

from retriever.render.sixel import sixel_image
from retriever.render.thumbnails import (RenderError, ThumbnailError, display_text, draw_region, region_box,
                                         thumbnail)

PROTOCOLS = ("kitty", "iterm2", "sixel")
CHOICES = ("auto", *PROTOCOLS, "off")  # what --preview and RETRIEVER_PREVIEW accept
ENV_VAR = "RETRIEVER_PREVIEW"
PREVIEW_SIDE = 192  # pixels: about 24 columns by 12 rows in a 8x16-pixel cell font
KITTY_CHUNK = 4096  # bytes of base64 per escape code, the kitty spec's maximum
PROBE_TIMEOUT_S = 0.5

# TERM values set by the terminal itself (they survive ssh, unlike the other variables).
_BY_TERM = {"xterm-kitty": "kitty", "xterm-ghostty": "kitty", "wezterm": "iterm2", "foot": "sixel",
            "foot-extra": "sixel", "foot-direct": "sixel", "mlterm": "sixel", "yaft-256color": "sixel",
            "contour": "sixel"}
_BY_TERM_PROGRAM = {"iterm.app": "iterm2", "wezterm": "iterm2", "ghostty": "kitty", "rio": "iterm2",
                    "mintty": "sixel"}
# Variables a terminal sets for its child processes, checked last (a process started from
# one terminal that opens another inherits them).
_BY_VARIABLE = (("KITTY_WINDOW_ID", "kitty"), ("GHOSTTY_RESOURCES_DIR", "kitty"),
                ("WEZTERM_EXECUTABLE", "iterm2"), ("WEZTERM_PANE", "iterm2"), ("MLTERM", "sixel"))
KONSOLE_SIXEL_SINCE = 220400  # KONSOLE_VERSION of Konsole 22.04


class PreviewError(RenderError):
    """An unknown preview protocol was asked for."""


def detect_protocol(environ: Mapping[str, str], is_tty: bool) -> str | None:
    """The image protocol the terminal named by the environment speaks, or None: not a terminal,
    a dumb one, a multiplexer, or one we cannot tell from its variables."""
    if not is_tty:
        return None
    term = environ.get("TERM", "").lower()
    if term == "dumb" or multiplexer(environ):
        return None
    # WezTerm speaks kitty's protocol too, but a new kitty placement there removes the previous
    # one (why chafa and timg went back to sixel and iTerm2 for it), which a listing of several
    # images cannot have. iTerm2 >= 3.5 also speaks kitty's: its own protocol is the native one.
    if term in _BY_TERM:
        return _BY_TERM[term]
    program = environ.get("TERM_PROGRAM", "").lower()
    if program in _BY_TERM_PROGRAM:
        return _BY_TERM_PROGRAM[program]
    if environ.get("LC_TERMINAL", "").lower() == "iterm2":  # passed on by ssh's SendEnv LC_*
        return "iterm2"
    for variable, protocol in _BY_VARIABLE:
        if environ.get(variable):
            return protocol
    konsole = environ.get("KONSOLE_VERSION", "")
    if konsole.isdigit() and int(konsole) >= KONSOLE_SIXEL_SINCE:
        return "sixel"
    return None


def multiplexer(environ: Mapping[str, str]) -> str | None:
    """'tmux', 'screen' or 'zellij' when running inside one, else None."""
    term = environ.get("TERM", "").lower()
    if environ.get("TMUX") or term.startswith("tmux") or environ.get("TERM_PROGRAM", "").lower() == "tmux":
        return "tmux"
    if environ.get("ZELLIJ") is not None:
        return "zellij"
    if environ.get("STY") or term.startswith("screen"):
        return "screen"  # tmux's default TERM is screen* too; TMUX told them apart above
    return None


def choose_protocol(requested: str | None, environ: Mapping[str, str], is_tty: bool,
                    *, probe: Callable[[], bool] | None = None) -> str | None:
    """The protocol to draw with, or None for text only.

    requested: the --preview value. A protocol name is obeyed as is, even when the output is not
    a terminal (the user asked for it); 'off' means none. 'auto' (or None): nothing unless the
    output is a terminal; then RETRIEVER_PREVIEW (a protocol, 'off' or 'auto'), then the
    environment (detect_protocol), then `probe` (e.g. probe_sixel), if given, for sixel.
    Raises PreviewError for an unknown name."""
    choice = _choice(requested or "auto", "--preview")
    if choice != "auto":
        return None if choice == "off" else choice
    if not is_tty:
        return None
    configured = environ.get(ENV_VAR, "").strip()
    choice = _choice(configured, ENV_VAR) if configured else "auto"
    if choice != "auto":
        return None if choice == "off" else choice
    found = detect_protocol(environ, is_tty)
    if found is None and probe is not None and environ.get("TERM", "").lower() != "dumb" and probe():
        found = "sixel"
    return found


def _choice(value: str, where: str) -> str:
    choice = value.strip().lower()
    if choice == "none":
        choice = "off"
    if choice not in CHOICES:
        raise PreviewError(f"{where}: unknown preview protocol {display_text(value)!r} "
                           f"(choose from {', '.join(CHOICES)})")
    return choice


# -- asking the terminal --------------------------------------------------------------------------


def probe_sixel(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the controlling terminal reports sixel graphics (a 4 among its Primary Device
    Attributes, `ESC [ c`). False whenever it cannot ask safely: no controlling terminal, not
    the foreground process (a background job that touches the terminal's modes is stopped by
    SIGTTOU), no termios (Windows), or no answer within `timeout` seconds. Every VT-compatible
    terminal answers this query at once; a terminal slower than `timeout` (a very slow ssh
    link) would show its late answer as typed text, which is why the timeout is generous."""
    if os.name != "posix":  # termios and /dev/tty
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDWR | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return False
    try:
        if os.tcgetpgrp(fd) != os.getpgrp():
            return False
        attributes = query_device_attributes(fd, timeout)
    except OSError:
        return False
    finally:
        os.close(fd)
    return attributes is not None and 4 in attributes


_DA1_REPLY = re.compile(rb"\x1b\[\?([0-9;]*)c")


def query_device_attributes(fd: int, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, ...] | None:
    """Send DA1 (`ESC [ c`) to the terminal open on fd and read its `ESC [ ? a;b;... c` answer,
    with echo and line buffering off meanwhile (restored after). None without an answer in time.
    Raises OSError (fd not a terminal)."""
    import select
    import termios
    import time

    saved = termios.tcgetattr(fd)
    raw = list(saved)
    raw[3] &= ~(termios.ICANON | termios.ECHO)  # lflag
    raw[6] = list(saved[6])
    raw[6][termios.VMIN], raw[6][termios.VTIME] = 0, 0
    received = b""
    try:
        termios.tcsetattr(fd, termios.TCSANOW, raw)
        os.write(fd, b"\x1b[c")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            received += chunk
            match = _DA1_REPLY.search(received)
            if match:
                return tuple(int(p) for p in match.group(1).split(b";") if p)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    return None


# -- the escape sequences -------------------------------------------------------------------------


def kitty_image(img) -> str:
    """kitty's graphics protocol: transmit and display (a=T) a PNG (f=100), base64 in chunks of at
    most 4096 bytes, m=1 on every chunk but the last. q=2: the terminal sends no reply, which
    would otherwise arrive on the shell's input as if typed. Only the first chunk carries the
    keys, as the spec requires."""
    payload = base64.standard_b64encode(_png(img)).decode("ascii")
    chunks = [payload[i : i + KITTY_CHUNK] for i in range(0, len(payload), KITTY_CHUNK)] or [""]
    out = []
    for i, chunk in enumerate(chunks):
        more = 1 if i < len(chunks) - 1 else 0
        keys = f"a=T,f=100,q=2,m={more}" if i == 0 else f"m={more}"
        out.append(f"\x1b_G{keys};{chunk}\x1b\\")
    return "".join(out)


def iterm2_image(img) -> str:
    """iTerm2's inline images (OSC 1337 File=), also drawn by WezTerm, Rio and Konsole: a PNG shown
    at its own size in pixels, aspect ratio kept."""
    data = _png(img)
    width, height = img.size
    args = f"inline=1;size={len(data)};width={width}px;height={height}px;preserveAspectRatio=1"
    return f"\x1b]1337;File={args}:{base64.standard_b64encode(data).decode('ascii')}\x07"


def tmux_passthrough(sequence: str) -> str:
    """Wrap escape sequences for tmux to hand to the outer terminal (tmux >= 3.3 needs
    `set -g allow-passthrough on`): DCS tmux; ... ST, every ESC inside doubled. Each complete
    sequence is wrapped on its own, keeping every passthrough small."""
    parts = re.findall(r"\x1b[_\]P].*?(?:\x1b\\|\x07)", sequence, flags=re.S)
    if "".join(parts) != sequence:
        raise ValueError("not a run of complete APC/OSC/DCS sequences")
    return "".join("\x1bPtmux;" + part.replace("\x1b", "\x1b\x1b") + "\x1b\\" for part in parts)


def encode_image(img, protocol: str, *, tmux: bool = False) -> str:
    """The escape sequence that draws img with protocol. tmux: for kitty and iTerm2, wrapped in
    tmux's passthrough; sixel is left for tmux itself to draw (tmux >= 3.4 built with sixel)."""
    if protocol == "kitty":
        sequence = kitty_image(img)
    elif protocol == "iterm2":
        sequence = iterm2_image(img)
    elif protocol == "sixel":
        return sixel_image(img)
    else:
        raise PreviewError(f"unknown preview protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    return tmux_passthrough(sequence) if tmux else sequence


def hit_line(hit) -> str:
    """The listing's text line for a hit, `rank  score  path[@timestamp]`, as `retriever search`
    prints it, with the name made safe for a terminal (see display_text)."""
    if "rerank_score" in hit.meta:  # search --rerank: the model's score, and where the encoder had it
        rerank = hit.meta["rerank_score"]
        shown = f"{rerank:+8.3f}" if rerank is not None else f"{'-':>8}"
        return (f"{hit.rank:>3}  {hit.score:.4f}  {shown}  (was {hit.meta.get('encoder_rank', '?')})  "
                f"{display_text(hit.label)}")
    return f"{hit.rank:>3}  {hit.score:.4f}  {display_text(hit.label)}"


def preview_lines(hit, protocol: str, max_side: int = PREVIEW_SIDE, *, tmux: bool = False) -> str:
    """One hit for a terminal: its thumbnail, with the box of the part that matched drawn on it
    when a part did (region search), then its text line (no newline at the end). Without a
    thumbnail (file gone, undecodable), the text line and a short note below it."""
    try:
        image = thumbnail(hit.path, hit.meta.get("frame_ms"), max_side)
    except ThumbnailError as exc:
        return f"{hit_line(hit)}\n{'':>13}(no preview: {exc.reason})"
    box = region_box(hit.meta)
    if box is not None:
        image = draw_region(image, box)
    return f"{encode_image(image, protocol, tmux=tmux)}\n{hit_line(hit)}"


def _png(img) -> bytes:
    buffer = io.BytesIO()
    rgb = img if img.mode in ("RGB", "RGBA", "L") else img.convert("RGB")
    rgb.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
