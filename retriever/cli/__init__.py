"""The command line: thin click commands over the library (retriever.api). The only package that
prints or exits.

Each command's module is imported when the command runs (or its help is asked for), never at
start-up: `retriever --help` lists the commands from SUMMARIES below without importing any of
them, and heavy packages (torch, open_clip, faiss) are imported inside commands. A test checks
that each summary is the first paragraph of its command's help.
"""

from __future__ import annotations

import importlib

import click

from retriever import __version__

# command name -> the module under retriever.cli that defines it
MODULES = {
    "adapt": "adapt", "ask": "vlm", "cache": "cache", "concept": "concepts", "caption": "vlm", "daemon": "daemon", "duplicates": "duplicates",
    "errors": "status", "finetune-vlm": "finetune", "index": "indexing", "locate": "vlm", "models": "status", "ocr": "ocr", "optimize": "optimize",
    "remove": "indexing", "search": "search", "serve": "serve", "similar": "search",
    "status": "status", "tag": "tags", "tags": "tags", "text": "ocr", "untag": "tags",
}
# command name -> the first paragraph of its help, for the command list of `retriever --help`
SUMMARIES = {
    "adapt": "Fit a small adapter that bends text queries toward what this collection's labels "
             "mean (concepts, confirmed tags, folder names): applied to queries on the fly, no photo re-encoded.",
    "ask": "Answer QUESTION from your photos: the k photos that match it best are shown to a "
           "vision-language model in one chat, numbered, and the answer cites them by number.",
    "cache": "The model cache: each model's ONNX export (and its measured indexing speed), made once per "
             "machine and shared by every index of the model. Entries are checked (sizes, hashes) before "
             "use; a damaged one is made again by the next `retriever index` of a new index or "
             "`retriever optimize`.",
    "caption": "Write a one-sentence caption of each photo into the index, with a vision-language model.",
    "concept": "Concepts learned from a few example photos (\"rex\", \"our boat\"): search them with "
               "concept:NAME, filter with --concept NAME, refine them with yes/no marks.",
    "daemon": "The warm query daemon of an index (see `retriever search --help`).",
    "duplicates": "Groups of duplicate photos: exact copies, and near-duplicates (resized, re-encoded, "
                  "cropped or lightly edited copies) found from the stored vectors.",
    "errors": "Files that could not be indexed, with the reason. They are retried when they change.",
    "finetune-vlm": "Train a LoRA adapter of the vision-language model on your own photos with captions or "
                    "questions and answers; caption, ask and --rerank use it from then on.",
    "index": "Add the photos under PATHS (folders, walked recursively, or files) to an index.",
    "locate": "Where QUERY is in the photo at PATH: the boxes a vision-language model that can point "
              "(Florence-2, PaliGemma, Qwen2-VL) gives for the phrase.",
    "models": "Encoders available: the offline one, and every open_clip architecture with its pretrained tags.",
    "ocr": "Read the text in each photo of the index (OCR): signs, receipts, screenshots, documents.",
    "optimize": "Rebuild the vector index from the stored vectors (no re-encoding, no model loaded).",
    "remove": "Drop files, or whole folders, from an index (the files on disk are not touched).",
    "search": "Photos that match QUERY, best first: text, images, or both, combined.",
    "serve": "Search the index from a browser or over HTTP: the page at http://HOST:PORT/, the JSON API "
             "under /api (schema at /openapi.json).",
    "similar": "Photos that look like IMAGES (files inside or outside the collection).",
    "status": "Where the index lives, its model, and its counts (images, vectors, failed, last run).",
    "tag": "Tag every image with the labels it shows (a built-in vocabulary, or your labels).",
    "tags": "The labels of the index with how many images have each, and the label set's settings.",
    "text": "Print the text read in the photo at PATH (one line per text line, top to bottom).",
    "untag": "Remove a wrong tag from a photo; later tagging runs never give it back.",
}


def summary_command(name: str) -> click.Command:
    """A stand-in holding only the summary of command `name`: click shortens its help for the
    command list exactly as it would the real command's."""
    return click.Command(name, help=SUMMARIES[name])


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (see the module's docstring)."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted(MODULES)

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in MODULES:
            module = importlib.import_module(f"retriever.cli.{MODULES[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, summary_command(name).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def all_commands() -> dict[str, click.Command]:
    """Every command, imported (for tests and documentation)."""
    return {name: main.get_command(None, name) for name in main.list_commands(None)}
