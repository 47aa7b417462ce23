"""A sixel encoder (DEC's VT340 graphics, spoken by foot, mlterm, xterm -ti vt340, WezTerm,
Konsole >= 22.04, Windows Terminal >= 1.22, mintty, tmux >= 3.4 built with sixel...).

The format, as the VT3xx programmer reference describes it:

    ESC P 0;1;0 q          DCS: sixel mode; P2=1: pixels not drawn stay as they were
    "1;1;W;H               raster attributes: square pixels, the image is W x H
    #n;2;r;g;b             colour register n, in RGB percent (0-100)
    #n <sixels>            select register n, then one character per column: 63 + a 6-bit
                           mask of the band's rows (bit 0 = top) painted in that colour
    !k c                   the character c, k times
    $                      back to the start of the band (to paint the next colour over it)
    -                      next band, 6 pixel rows down
    ESC \\                  ST: end

Colours are quantised to at most 256, the register count sixel terminals offer, with Pillow's
fast octree (on a 256-pixel photo about a hundred times faster than median cut, and closer),
then Floyd-Steinberg dithering against that palette. Only the colours an image uses are defined.
No graphics newline follows the last band: it could scroll a full-screen image (see
hackerb9/vt340test); the caller moves to the next text line itself.
"""

from __future__ import annotations

import re

MAX_COLORS = 256


def sixel_image(img, colors: int = MAX_COLORS) -> str:
    """A PIL image -> one sixel DCS string, ready to write to a terminal."""
    from PIL import Image
    import numpy as np

    rgb = img if img.mode == "RGB" else img.convert("RGB")
    colors = max(2, min(int(colors), MAX_COLORS))
    palette_image = rgb.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    indexed = rgb.quantize(palette=palette_image, dither=Image.Dither.FLOYDSTEINBERG)
    return encode_indexed(np.asarray(indexed), indexed.getpalette() or [])


def encode_indexed(indices, palette: list[int]) -> str:
    """indices: (height, width) uint8 array of palette entries; palette: flat [r, g, b, r, g, b, ...]
    (0-255). Every entry used must be in the palette."""
    import numpy as np

    indices = np.asarray(indices, dtype=np.uint8)
    height, width = indices.shape
    used = np.unique(indices)
    if len(palette) < 3 * (int(used[-1]) + 1):
        raise ValueError("palette shorter than the indices used")
    out = [f'\x1bP0;1;0q"1;1;{width};{height}']
    for c in used.tolist():
        r, g, b = palette[3 * c : 3 * c + 3]
        out.append(f"#{c};2;{_percent(r)};{_percent(g)};{_percent(b)}")
    columns = np.arange(width)
    masks = np.zeros((256, width), dtype=np.uint8)  # per colour, per column: rows of the band painted
    for top in range(0, height, 6):
        band = indices[top : top + 6]
        masks[:] = 0
        for row in range(band.shape[0]):
            # Each pixel has one colour, so (colour, column) pairs within a row are distinct.
            masks[band[row], columns] |= 1 << row
        present = np.unique(band)
        if top:
            out.append("-")
        out.append("$".join(f"#{c}{row}" for c, row in zip(present.tolist(), _sixel_rows(masks[present]))))
    out.append("\x1b\\")
    return "".join(out)


def _percent(value: int) -> int:
    return (int(value) * 100 + 127) // 255  # rounded


# Characters are 63 + mask. Values are uint8, so arithmetic wraps: these become "\0" and "\n".
_DROPPED, _NEWLINE = (0 - 63) % 256, (ord("\n") - 63) % 256


def _sixel_rows(masks) -> list[str]:
    """(colours, width) masks -> one string of sixels per colour, without its trailing blanks
    ("?": no pixel of that colour) and with runs of 4 or more written !k. Done for all the rows of
    a band at once: numpy marks the blanks to drop, one regular-expression pass writes the runs."""
    import numpy as np

    count, width = masks.shape
    text = np.empty((count, width + 1), dtype=np.uint8)
    text[:, :width] = masks
    text[:, width] = _NEWLINE
    trailing = np.cumsum(masks[:, ::-1] != 0, axis=1)[:, ::-1] == 0  # no pixel from here to the end
    text[:, :width][trailing] = _DROPPED
    text += np.uint8(63)
    rows = text.tobytes().decode("ascii").replace("\0", "")
    return _RUN.sub(_repeat, rows).split("\n")[:count]


_RUN = re.compile(r"([?-~])\1{3,}")


def _repeat(match: re.Match) -> str:
    return f"!{match.end() - match.start()}{match.group(1)}"
