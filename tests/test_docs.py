"""The README documents every command and every option, its shell examples run, and CI runs exactly
the README's commands.

Options (test_readme_documents_every_option). Every option of every command, subcommands of groups
included (`cache list`, `daemon start`, ...), hidden ones excepted, is named in the README by its
long name (`--min-score`; an option with only a short name by that; for an on/off pair such as
`--onnx/--no-onnx`, either spelling) in that command's part of the README, which is:
  - every section under a heading that names the command (`retriever NAME`, or `NAME` in
    backticks; for a subcommand, its group's heading too), down to the next heading of the same
    or a higher level;
  - every paragraph, list item, table row or code line elsewhere that names it (`retriever
    NAME`, `NAME` in backticks; `retriever cache list|prune` names both subcommands).
The options the commands share (GENERAL_OPTIONS: --help, --home, --index, --json, --quiet,
--device, and the group's --version) may instead be documented once, in the general paragraph of
"Using it" (the one that starts with `retriever --help`), and must be documented there.

Examples (test_readme_example). Every line of a shell code block that runs `retriever` is an
example (a line may run several, joined by `;` or `&&`; of a pipeline only the `retriever`
command runs, not what it pipes into). All are checked against the commands' options
(test_every_readme_example_parses); each one runs unless SKIPPED gives the reason why not. They
run in README order, in this process (click's CliRunner), against one index of the example photos
made with the offline encoder (tests/conftest.py's offline_index, copied), so a later example sees
what an earlier one did (tags, optimize). Placeholders are replaced word for word as PLACEHOLDERS
says (`~/Pictures` is the example photos; the README's other file names are example photos or files
of a sandbox folder), and EXTRA_ARGS adds `--no-onnx` to `retriever optimize`. The commands load
the session's offline encoder instead of the same weights again (SharedEncoder). Each run must exit
0, raise nothing and print no traceback or error; what it prints as JSON must parse, and an --html
page must be written.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from retriever.cli import all_commands, main
from tests.conftest import PHOTOS, REPO

README = (REPO / "README.md").read_text()


# -- the README as blocks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A paragraph, list item, table row or heading of the README, or one line of a code block
    (backslash continuations joined)."""

    line: int  # where it starts in README.md, from 1
    text: str
    language: str | None  # a code line: its block's language ("" when none given); prose: None
    headings: tuple[str, ...]  # the headings it stands under, outermost first ("" for a skipped level)


def readme_blocks(text: str = README) -> list[Block]:
    blocks: list[Block] = []
    headings: list[str] = []
    language: str | None = None  # inside a code block: its language
    paragraph: list[str] = []
    start = 0

    def flush() -> None:
        if paragraph:
            blocks.append(Block(start, "\n".join(paragraph), None, tuple(headings)))
            paragraph.clear()

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        stripped = line.strip()
        i += 1
        if language is not None:
            if stripped.startswith("```"):
                language = None
            elif stripped:
                while stripped.endswith("\\") and i < len(lines):
                    stripped = stripped[:-1].rstrip() + " " + lines[i].strip()
                    i += 1
                blocks.append(Block(number, stripped, language, tuple(headings)))
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        if stripped.startswith("```"):
            flush()
            language = stripped[3:].strip()
        elif heading:
            flush()
            level = len(heading[1])
            headings[level - 1:] = []
            headings.extend([""] * (level - 1 - len(headings)) + [heading[2]])
            blocks.append(Block(number, heading[2], None, tuple(headings)))
        elif not stripped:
            flush()
        else:
            if stripped.startswith("|") or re.match(r"\s*(?:[-*]|\d+\.) ", line):
                flush()  # a table row or a new list item starts a block
            if not paragraph:
                start = number
            paragraph.append(line)
            if stripped.startswith("|"):
                flush()
    flush()
    return blocks


BLOCKS = readme_blocks()


def names_command(text: str, command: str) -> bool:
    """Whether `text` names the command `command` ("search", "cache list")."""
    group, _, sub = command.rpartition(" ")
    if group:
        return re.search(rf"retriever {re.escape(group)} (?:[\w-]+\|)*{re.escape(sub)}(?![\w-])", text) is not None
    return re.search(rf"retriever {re.escape(command)}(?![\w-])|`{re.escape(command)}`", text) is not None


def command_part(command: str) -> str:
    """The README's text about `command` (see the module's docstring)."""
    group = command.rpartition(" ")[0]
    owners = [command, group] if group else [command]
    return "\n".join(
        block.text for block in BLOCKS
        if names_command(block.text, command)
        or any(names_command(heading, owner) for heading in block.headings for owner in owners)
    )


def general_paragraph() -> str:
    found = [b.text for b in BLOCKS if b.language is None and b.text.startswith("`retriever --help`")
             and "Using it" in b.headings]
    assert len(found) == 1, "the README's general paragraph (Using it: `retriever --help` ...) is gone"
    return found[0]


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


# -- the commands ----------------------------------------------------------------------------------


def every_command() -> dict[str, click.Command]:
    """Every command by its full name, subcommands of groups included ("cache list")."""
    found: dict[str, click.Command] = {}

    def add(name: str, command: click.Command) -> None:
        found[name] = command
        if isinstance(command, click.Group):
            for sub, subcommand in command.commands.items():
                add(f"{name} {sub}", subcommand)

    for name, command in all_commands().items():
        add(name, command)
    return found


def spellings(option: click.Option) -> list[str]:
    """The names an option may be documented by: its long names (either side of an on/off pair),
    or its short ones when it has no long name."""
    names = [*option.opts, *option.secondary_opts]
    return [n for n in names if n.startswith("--")] or names


def options_of(command: click.Command) -> list[click.Option]:
    ctx = click.Context(command, info_name=command.name, help_option_names=["-h", "--help"])
    return [p for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]


GENERAL_OPTIONS = ("--help", "--version", "--home", "--index", "--json", "--quiet", "--device")


def test_readme_documents_every_command():
    for name in all_commands():
        assert f"retriever {name}" in README, name


def test_readme_documents_every_option():
    general = general_paragraph()
    for option in GENERAL_OPTIONS:
        assert mentions(general, option), f"{option} is a general option, but the general paragraph misses it"
    missing = []
    for name, command in every_command().items():
        part = command_part(name)
        assert part, f"the README has no part about `retriever {name}`"
        for option in options_of(command):
            names = spellings(option)
            if any(mentions(part, n) for n in names):
                continue
            if any(n in GENERAL_OPTIONS for n in names):
                continue
            missing.append(f"retriever {name} {'/'.join(names)}")
    assert not missing, "options the README does not document:\n  " + "\n  ".join(missing)


def test_the_option_rule_finds_what_it_should():
    """The rule itself: a command's section, a block elsewhere naming it, not other commands' text."""
    assert mentions(command_part("search"), "--min-score")  # its section's filter table
    assert mentions(command_part("search"), "--no-daemon")  # the daemon section's code line
    assert not mentions(command_part("remove"), "--min-score")
    assert names_command("retriever cache list|prune", "cache prune")
    assert not names_command("retriever tags", "tag") and not names_command("retriever status", "daemon status")
    assert not mentions("--min-size-x", "--min-size") and mentions("(`--min-size N`)", "--min-size")


# -- the examples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    line: int  # in README.md
    source: str  # the README's line, its comment cut
    commands: tuple[tuple[str, ...], ...]  # the words after `retriever` of each command it runs


def cut_comment(line: str) -> str:
    """The line without its shell comment (a `#` outside quotes, at the start of a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, split at ; && || | & (quotes respected)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in (";", "&&", "||", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def readme_examples() -> list[Example]:
    examples = []
    for block in BLOCKS:
        if block.language not in ("", "sh", "bash", "shell", "console"):
            continue
        source = cut_comment(block.text)
        runs = tuple(tuple(words[1:]) for words in shell_commands(source) if words[0] == "retriever")
        if runs:
            examples.append(Example(block.line, source, runs))
    return examples


EXAMPLES = readme_examples()

NETWORK = "downloads weights from the Hugging Face hub (no network here)"
VLM = "needs a vision-language model's weights, a download (tests/test_vlm.py, tests/test_grounding.py run it with tiny VLMs)"
SERVER = "serves until it is stopped (tests/test_serve.py runs the server)"
REMOTE = "reads s3://: remote storage and credentials (tests/test_distributed.py uses memory://)"
RAY = "starts Ray or joins a cluster (tests/test_distributed.py runs --engine ray)"
CLUSTER = "the index of the Ray cluster example (/data/retriever), made by the skipped command above it"

# README example (its line, comment cut) -> why it is not run here. Every other example runs.
SKIPPED = {
    "retriever caption": VLM,
    "retriever finetune-vlm pairs.jsonl --holdout 0.1": VLM,
    "retriever caption --replace": VLM,
    'retriever ask --image IMG_1307.jpg "whose boat is this?"': VLM,
    'retriever search "our boat" --rerank': VLM,
    'retriever search "our boat" --rerank --no-vlm-adapter': VLM,
    "retriever finetune-vlm --remove": "removes the adapter the skipped training above it would have stored",
    "retriever finetune-vlm pairs.jsonl --vlm HuggingFaceTB/SmolVLM-256M-Instruct --device cuda --epochs 3 "
    "--grad-accum 8 --learning-rate 2e-4": VLM,
    "retriever finetune-vlm pairs.jsonl --vlm HuggingFaceTB/SmolVLM-Instruct --device cuda:1 --lora-rank 16 "
    "--lora-alpha 32 --target-modules q_proj,k_proj,v_proj,o_proj": VLM,
    "retriever caption --replace --vlm HuggingFaceTB/SmolVLM-256M-Instruct --device cuda": VLM,
    'retriever ask "what colour was the car at the beach?"': VLM,
    'retriever ask "which receipt is from a restaurant?" -k 8 --after 2024-01': VLM,
    'retriever ask --image IMG_2041.jpg "what does the sign say?"': VLM,
    "retriever ask \"where did we eat?\" --json | jq -r '.cited_paths[]'": VLM,
    'retriever locate "the red car" IMG_2041.jpg': VLM,
    'retriever locate "the keys" IMG_2041.jpg --draw keys.jpg': VLM,
    'retriever locate "dog ; ball" IMG_2041.jpg --vlm ~/models/paligemma2-3b-mix-224 --json': VLM,
    'retriever ask --boxes --image IMG_2041.jpg "where is the dog?" --vlm Qwen/Qwen2-VL-2B-Instruct': VLM,
    "retriever optimize --on-disk --kind ivf-pq --workers 4 --shard-size 500000":
        "ivf-pq needs at least 9,984 vectors to train its codebooks; the example photos are 15",
    "retriever index s3://bucket/photos": REMOTE,
    "retriever index /mnt/nas/photos --engine ray": RAY,
    "retriever index s3://bucket/photos --engine ray --address auto": RAY,
    "retriever serve": SERVER,
    "retriever serve --vlm HuggingFaceTB/SmolVLM-256M-Instruct": SERVER,
    "retriever daemon start [--foreground]":
        "starts a background process that loads the model and outlives the example (tests/test_daemon.py)",
    "retriever index ~/Pictures --model ViT-B-32 --pretrained laion2b_s34b_b79k": NETWORK,
    "retriever index ~/Pictures --model ViT-B-16 --pretrained ~/models/vit-b-16.safetensors":
        "a weights file the README only names",
    "retriever index ~/Pictures --model hf-hub:timm/ViT-SO400M-14-SigLIP-384": NETWORK,
    "retriever index ~/Pictures --model local-dir:/models/my-clip": "a model folder the README only names",
    "retriever index ~/Pictures --model my-arch.json --pretrained my-arch.pt":
        "an architecture and weights the README only names",
    "retriever index s3://bucket/photos --engine ray --address auto --model ViT-B-32 --pretrained laion2b_s34b_b79k "
    "--batch-size 256 --home /data/retriever --index photos": RAY,
    "retriever optimize --on-disk --home /data/retriever --index photos": CLUSTER,
    'retriever search "a dog on the beach" --home /data/retriever --index photos': CLUSTER,
}

# A README word -> what the example runs with instead ({photos}: examples/photos, {sandbox}: a folder
# of this test module). Words match whole; a `~` left over fails the example.
PLACEHOLDERS = {
    "~/Pictures": "{photos}",  # the indexed collection
    "~/Pictures/IMG_0042.jpg": "{photos}/coffee.jpg",  # a photo of the collection
    "holiday/IMG_0042.jpg": "{photos}/coffee.jpg",
    "a.jpg": "{photos}/astronaut.jpg",
    "b.jpg": "{photos}/rocket.jpg",
    "beach.jpg": "{photos}/gravel.webp",
    "~/Downloads/x.jpg": "{sandbox}/x.jpg",  # photos outside the collection: reduced copies
    "~/ref.jpg": "{sandbox}/ref.jpg",
    "labels.txt": "{sandbox}/labels.txt",  # one label a line, a comment, a comma-separated line
    "results.html": "{sandbox}/results.html",
    "rex1.jpg": "{photos}/chelsea.png",  # `retriever concept`: examples in the collection and outside it
    "rex2.jpg": "{photos}/astronaut.jpg",
    "~/Downloads/rex3.jpg": "{sandbox}/x.jpg",
    "rex1.jpg@20,20,300,300": "{photos}/chelsea.png@20,20,300,300",
    "other_dog.jpg": "{photos}/coffee.jpg",
    "sofa.jpg": "{photos}/coffee.jpg",
    "rex.json": "{sandbox}/rex.json",
}
# `retriever optimize` would also make the model's ONNX export (15-30 s on 2 cores, once per model
# and machine; tests/test_model_cache.py and tests/test_onnx.py test it): its examples run without.
EXTRA_ARGS = {"optimize": ("--no-onnx",)}


def test_the_example_collector_finds_what_it_should():
    by_source = {e.source: e for e in EXAMPLES}
    both = by_source['retriever tag --labels "cat, dog, beach, receipt"; retriever search sunset --tag beach']
    assert both.commands == (("tag", "--labels", "cat, dog, beach, receipt"), ("search", "sunset", "--tag", "beach"))
    piped = by_source["retriever duplicates --min-size 3 --json | jq -r '.members[1:][].path'"]
    assert piped.commands == (("duplicates", "--min-size", "3", "--json"),)
    ci = by_source['pip install -e . && retriever index examples/photos && retriever search "a cat"']
    assert ci.commands == (("index", "examples/photos"), ("search", "a cat"))
    assert any("--home /data/retriever --index photos" in source for source in by_source)  # continuation lines
    assert not any("photos.search" in source for source in by_source)  # the Python block is test_api's
    assert len(EXAMPLES) > 40


def test_every_skipped_example_is_in_the_readme():
    assert set(SKIPPED) <= {e.source for e in EXAMPLES}, set(SKIPPED) - {e.source for e in EXAMPLES}


def leaf_command(words: tuple[str, ...]) -> tuple[click.Command, str, list[str]]:
    """The command the words run, its full name, and its arguments."""
    commands = every_command()
    name, rest = words[0], list(words[1:])
    assert name in commands, f"no command `retriever {name}`"
    while isinstance(commands[name], click.Group):
        assert rest and f"{name} {rest[0]}" in commands, f"`retriever {name}` needs one of its subcommands"
        name, rest = f"{name} {rest[0]}", rest[1:]
    return commands[name], name, rest


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"L{e.line}")
def test_every_readme_example_parses(example):
    """Run or skipped, each example's options exist and take the values it gives (`[--x]`: an
    optional part, checked with it)."""
    for words in example.commands:
        command, name, args = leaf_command(words)
        args = [re.sub(r"^\[(.*)\]$", r"\1", a) for a in args]
        try:
            command.make_context(f"retriever {name}", args)
        except click.UsageError as exc:
            raise AssertionError(f"README line {example.line}: {example.source}: {exc.format_message()}") from None


class SharedEncoder:
    """The session's offline encoder for every command an example runs, text embeddings
    remembered: each command would load the same weights again, and `tag` embeds its labels through
    12 prompts each (seconds each time on 2 cores)."""

    def __init__(self, inner):
        self.inner, self.texts = inner, {}

    def embed_texts(self, texts):
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.texts]
        if missing:
            self.texts.update(zip(missing, self.inner.embed_texts(missing)))
        return np.stack([self.texts[t] for t in texts])

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def readme_world(tmp_path_factory, offline_index, offline_encoder):
    """The example photos indexed (a copy of offline_index) in a home of their own, the sandbox of
    PLACEHOLDERS, and the environment the examples run in."""
    from PIL import Image

    from retriever.index import Index

    root = tmp_path_factory.mktemp("readme")
    home, sandbox = root / "home", root / "sandbox"
    shutil.copytree(offline_index.folder, home / "default", ignore=shutil.ignore_patterns("write.lock"))
    sandbox.mkdir()
    for source, name in (("chelsea.png", "x.jpg"), ("coffee.jpg", "ref.jpg")):
        with Image.open(PHOTOS / source) as image:
            image.convert("RGB").reduce(2).save(sandbox / name, quality=85)
    (sandbox / "labels.txt").write_text("# what the photos may show\ncat\ndog\nbeach, receipt\n")
    values = {"photos": str(PHOTOS), "sandbox": str(sandbox)}
    shared = SharedEncoder(offline_encoder)

    def load_encoder(self, device="auto", batch_size=None):
        assert self.model_id == offline_encoder.model_id, self.model_id
        return shared

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Index, "load_encoder", load_encoder)
        yield {
            "placeholders": {word: value.format(**values) for word, value in PLACEHOLDERS.items()},
            "env": {"RETRIEVER_HOME": str(home), "RETRIEVER_CACHE_DIR": str(root / "model-cache"),
                    "RETRIEVER_NO_DAEMON": "1", "RETRIEVER_PREVIEW": None, "RETRIEVER_TOKEN": None},
        }


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"L{e.line}")
def test_readme_example(example, readme_world, monkeypatch):
    if example.source in SKIPPED:
        pytest.skip(SKIPPED[example.source])
    monkeypatch.chdir(REPO)  # `retriever index examples/photos` is run from the repository
    runner = CliRunner()
    for words in example.commands:
        args = [readme_world["placeholders"].get(w, w) for w in words]
        args += EXTRA_ARGS.get(args[0], ())
        assert not any(a.startswith("~") for a in args), f"a placeholder PLACEHOLDERS lacks: {args}"
        result = runner.invoke(main, args, env=readme_world["env"])
        shown = f"README line {example.line}: retriever {shlex.join(args)}\n{result.output}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(shown) from result.exception
        assert result.exit_code == 0, shown
        assert "Traceback" not in result.output and "Error:" not in result.output, shown
        if "--json" in args:
            for line in result.stdout.splitlines():
                json.loads(line)
        if "--html" in args:
            page = Path(args[args.index("--html") + 1]).read_text()
            assert page.lstrip().lower().startswith("<!doctype html"), shown


# -- CI and the example photos ---------------------------------------------------------------------


def test_ci_runs_the_readme_commands_exactly():
    script = REPO / ".ci" / "run"
    out = subprocess.run(
        ["bash", "-c", f"source <(sed -n '/^readme_command()/,/^}}/p' {script}); readme_command test; readme_command main"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out == [
        "pip install -e '.[dev]' && python -m pytest",
        'pip install -e . && retriever index examples/photos && retriever search "a cat"',
    ]
    assert README.count("```\n" + out[0] + "\n```") == 1


def test_every_example_photo_has_a_recorded_source():
    sources = (REPO / "examples" / "photos" / "SOURCES.md").read_text()
    photos = [p.name for p in (REPO / "examples" / "photos").iterdir() if p.suffix != ".md"]
    assert 10 <= len(photos) <= 30
    for name in photos:
        assert f"| {name} |" in sources, name
