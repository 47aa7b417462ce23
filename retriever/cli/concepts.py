"""`retriever concept`: concepts learned from a few example photos (retriever.concepts)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import click

from retriever.cli.options import device_option, index_options, reports_errors
from retriever.cli.output import shown
from retriever.errors import RetrieverError

LAST_RESULTS = "last-results.json"  # in the index folder: the last search's hits, for --from-results


def remember_results(home, index_name: str, terms, hits) -> None:
    """Keep the ids of a search's hits (private file in the index folder) for `concept add
    --from-results`. Best effort: a search never fails for it."""
    from retriever.locations import index_folder
    from retriever.query import describe

    folder = index_folder(home, index_name)
    if not folder.is_dir():
        return
    data = {"query": describe(terms) if terms else "", "hits": [{"rank": h.rank, "id": h.id, "path": h.path} for h in hits]}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".last-results-", dir=folder)
        with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600
            json.dump(data, out)
        os.replace(tmp, folder / LAST_RESULTS)
    except OSError:
        pass


def _last_results(home, index_name: str) -> dict:
    from retriever.locations import index_folder

    path = index_folder(home, index_name) / LAST_RESULTS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise RetrieverError("no search to take results from: run `retriever search ...` on this index first") from None


def _ranks(text: str | None, count: int, option: str) -> list[int]:
    """'1,3-5' -> [1, 3, 4, 5] (1-based ranks of the last search)."""
    if not text:
        return []
    out: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise RetrieverError(f"{option} takes ranks like 1,3-5, not {text!r}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low < 1 or high < low or high > count:
            raise RetrieverError(f"{option} {text}: the last search had {count} results (ranks 1-{count})")
        out.extend(range(low, high + 1))
    return list(dict.fromkeys(out))


def _open(home, index_name, device):
    from retriever.api import open as open_collection

    return open_collection(home, index_name, device=device, one_query=True)


def _print_concept(info: dict, as_json: bool, verb: str = "") -> None:
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False))
        return
    usable = "" if info.get("usable", True) else f"  (model {info['model']}: not usable with this index's model)"
    click.echo(f"{verb}{shown(info['name'])}: {info['positives']} yes, {info['negatives']} no; "
               f"refit #{info['version']} in {info.get('fit_ms') or 0:.0f} ms{usable}")
    for example in info.get("examples", []):
        where = shown(example["path"]) if example["path"] else "(an image from outside the index)"
        photo = f"#{example['id']} " if example["id"] is not None else ""
        click.echo(f"  {example['example']:>4}  {example['label']:<3}  {photo}{where}  [{example['source']}]")


@click.group("concept")
def concept() -> None:
    """Concepts learned from a few example photos ("rex", "our boat"): search them with
    concept:NAME, filter with --concept NAME, refine them with yes/no marks.

    \b
      retriever concept add rex rex1.jpg rex2.jpg ~/Downloads/rex3.jpg
      retriever concept add rex --not other_dog.jpg
      retriever search concept:rex + beach          rank by the concept, with other terms
      retriever search --concept rex --after 2024   the photos the concept says yes to
      retriever search concept:rex                  then mark the results:
      retriever concept add rex --from-results --ranks 1,2,5 --not-ranks 3,4
      retriever concept list | show rex | remove rex

    A concept is a linear scorer over the stored photo vectors, fitted in milliseconds from its
    examples against random photos of the index (no photo is read again, nothing is re-encoded);
    it is refitted after every change. Examples are photos of the index or from anywhere
    (their vectors are kept, so they stay examples when moved or deleted), or parts of photos
    (photo.jpg@x0,y0,x1,y1). A concept belongs to the index's model.
    """


@concept.command("add")
@click.argument("name")
@click.argument("images", nargs=-1)
@click.option("--not", "negatives", multiple=True, metavar="IMAGE",
              help="A photo that does not show it (repeatable): inside the index or not.")
@click.option("--id", "ids", multiple=True, type=int, metavar="ID", help="A photo of the index, by its id, that shows it.")
@click.option("--not-id", "not_ids", multiple=True, type=int, metavar="ID",
              help="A photo of the index, by its id, that does not show it.")
@click.option("--from-results", is_flag=True,
              help="Take examples from the last `retriever search`/`similar` on this index: every result "
                   "shows it, or only --ranks; --not-ranks do not.")
@click.option("--ranks", metavar="1,3-5", help="With --from-results: the ranks that show it.  [default: all]")
@click.option("--not-ranks", metavar="1,3-5", help="With --from-results: the ranks that do not show it.")
@index_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the concept as one JSON object.")
@reports_errors
def add(name, images, negatives, ids, not_ids, from_results, ranks, not_ranks, home, index_name, device, as_json):
    """Teach concept NAME from photos that show it (IMAGES) and that do not (--not); created
    when new, refitted at once. Run it again to add more."""
    ids, not_ids = list(ids), list(not_ids)
    if (ranks or not_ranks) and not from_results:
        raise click.UsageError("--ranks and --not-ranks need --from-results")
    if from_results:
        last = _last_results(home, index_name)
        hits = last.get("hits", [])
        if not hits:
            raise RetrieverError("the last search had no results to take")
        no = _ranks(not_ranks, len(hits), "--not-ranks")
        yes = _ranks(ranks, len(hits), "--ranks") if ranks else [r for r in range(1, len(hits) + 1) if r not in no]
        if set(yes) & set(no):
            raise RetrieverError(f"rank {min(set(yes) & set(no))} is in both --ranks and --not-ranks")
        ids += [hits[r - 1]["id"] for r in yes]
        not_ids += [hits[r - 1]["id"] for r in no]
    with _open(home, index_name, device) as collection:
        info = collection.add_concept(name, images, negatives=negatives, ids=ids, not_ids=not_ids)
    _print_concept(info, as_json, "learned ")


@concept.command("list")
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object a concept.")
@reports_errors
def list_(home, index_name, as_json):
    """The concepts of the index, with their example counts."""
    with _open(home, index_name, "cpu") as collection:
        concepts = collection.concepts()
    if not concepts and not as_json:
        click.echo("no concepts yet: retriever concept add NAME PHOTO...", err=True)
    for info in concepts:
        _print_concept(info, as_json)


@concept.command("show")
@click.argument("name")
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the concept and its examples as one JSON object.")
@reports_errors
def show(name, home, index_name, as_json):
    """A concept's examples (numbered: remove one with `concept remove NAME --example N`)."""
    with _open(home, index_name, "cpu") as collection:
        _print_concept(collection.concept(name), as_json)


@concept.command("remove")
@click.argument("name")
@click.option("--id", "ids", multiple=True, type=int, metavar="ID",
              help="Only drop the examples of this photo id (repeatable); the concept is refitted.")
@click.option("--example", "examples", multiple=True, type=int, metavar="N",
              help="Only drop example number N of `concept show` (repeatable); the concept is refitted.")
@index_options
@reports_errors
def remove(name, ids, examples, home, index_name):
    """Remove concept NAME (or only some of its examples)."""
    with _open(home, index_name, "cpu") as collection:
        info = collection.remove_concept(name, ids=ids, examples=examples)
    if info is None:
        click.echo(f"removed concept {shown(name)}")
    else:
        _print_concept(info, False, "refitted ")


@concept.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@index_options
@reports_errors
def export(name, file, home, index_name):
    """Write concept NAME (its model and its examples' vectors) to FILE, for `concept import`
    into another index of the same model."""
    with _open(home, index_name, "cpu") as collection:
        data = collection.export_concept(name)
    try:
        file.write_text(json.dumps(data))
    except OSError as exc:
        raise RetrieverError(f"cannot write {file}: {exc.strerror or exc}") from None
    click.echo(f"wrote {shown(str(file))} ({len(data['examples'])} examples)")


@concept.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", metavar="NAME", help="Store it under this name.  [default: the file's]")
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the concept as one JSON object.")
@reports_errors
def import_(file, name, home, index_name, as_json):
    """Add the concept in FILE (from `concept export`) to this index: refused when the index
    has another model (the vectors would not compare)."""
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise RetrieverError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError:
        raise RetrieverError(f"{file} is not a concept file (not JSON)") from None
    if not isinstance(data, dict):
        raise RetrieverError(f"{file} is not a concept file")
    with _open(home, index_name, "cpu") as collection:
        info = collection.import_concept(data, name)
    _print_concept(info, as_json, "imported ")


COMMANDS = [concept]
