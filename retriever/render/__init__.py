"""Output a person wants to look at: thumbnails of hits inline in a terminal (kitty, iTerm2 and
sixel protocols) and a self-contained HTML page of results.

    thumbnails.py  hit -> small RGB image, through the safe decoder (photos) or PyAV (video frames);
                   the box of the part of a photo that matched (region search) drawn on it
    terminal.py    which protocol a terminal speaks; kitty and iTerm2 escape sequences; one hit's lines
    sixel.py       the sixel encoder
    page.py        the HTML results page and its atomic writing

Nothing here prints: functions return the text to write, and raise RenderError (a RetrieverError)
for what the user can fix. Only the standard library is imported at start-up; Pillow, numpy and
PyAV inside the functions that use them.
"""

from __future__ import annotations

from retriever.render.page import file_url, html_page, write_html
from retriever.render.sixel import sixel_image
from retriever.render.terminal import (
    CHOICES,
    ENV_VAR,
    PREVIEW_SIDE,
    PROTOCOLS,
    PreviewError,
    choose_protocol,
    detect_protocol,
    encode_image,
    hit_line,
    iterm2_image,
    kitty_image,
    multiplexer,
    preview_lines,
    probe_sixel,
    query_device_attributes,
    tmux_passthrough,
)
from retriever.render.thumbnails import (DEFAULT_SIDE, REGION_COLOUR, RenderError, ThumbnailError, display_text,
                                         draw_region, region_box, thumbnail)

__all__ = [
    "CHOICES", "DEFAULT_SIDE", "ENV_VAR", "PREVIEW_SIDE", "PROTOCOLS", "PreviewError", "REGION_COLOUR",
    "RenderError", "ThumbnailError", "choose_protocol", "detect_protocol", "display_text", "draw_region",
    "encode_image", "file_url", "hit_line", "html_page", "iterm2_image", "kitty_image", "multiplexer",
    "preview_lines", "probe_sixel", "query_device_attributes", "region_box", "sixel_image", "thumbnail",
    "tmux_passthrough", "write_html",
]
