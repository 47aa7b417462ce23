"""The command line: thin click commands over the library (retriever.api). The only package that
prints or exits.

Heavy packages (torch, open_clip, faiss) are imported inside commands, never at start-up, so
`retriever --help` stays fast.
"""

from __future__ import annotations

import click

from retriever import __version__
from retriever.cli import cache, daemon, duplicates, indexing, optimize, search, serve, status, tags, vlm


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="retriever")
def main() -> None:
    """Search your photos by text or by example, locally.

    \b
      retriever index ~/Pictures              embed every photo, remember it
      retriever search "a dog on the beach"   text -> image
      retriever similar ~/Downloads/x.jpg     image -> image
      retriever search beach - people --after 2023 --in ~/Pictures/trips
      retriever duplicates                    exact copies and near-duplicates
      retriever tag --labels "cat,dog,beach"  zero-shot tags, then search --tag
      retriever status                        where the index lives, its model, counts

    Indexes live in ./indexes (or --home / $RETRIEVER_HOME), one folder per --index NAME.
    """
    import warnings

    # Huge images are refused by retriever's own pixel limit, with a recorded reason.
    warnings.filterwarnings("ignore", message=".*decompression bomb.*")


for _module in (indexing, search, daemon, status, cache, duplicates, optimize, serve, tags, vlm):
    for _command in _module.COMMANDS:
        main.add_command(_command)
