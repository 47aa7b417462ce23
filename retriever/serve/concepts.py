"""The concepts of the HTTP API (retriever.concepts over the server's Collection): list, show,
relevance feedback ("yes, this" / "not this" marks on catalog photos, refitted at once), example
images uploaded from outside the collection, dropping examples or a whole concept, export and
import. Searches use a concept through the query language (q=concept:NAME) and the `concept=`
filter of /api/search and /api/similar (retriever.serve.app).

Writes go through a short-lived writable catalog (retriever.concepts), so a server on a read-only
index can learn concepts; the next search reads the concept's new version. Errors: an unknown
concept, or an example it does not hold, is a 404; a bad name, photo ids that are not in the index,
a mark that leaves no positive, another model's concept are 400s, all with the library's one-line
message."""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from fastapi import Body, FastAPI, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from retriever.concepts import ConceptError, check_name
from retriever.serve.service import NotFound, ServeError, Service, upload_bytes

MAX_MARKS = 1000  # photo ids in one marks request
MAX_ID = (1 << 63) - 1  # SQLite's integers


class Marks(BaseModel):
    """Relevance feedback: catalog photo ids that show the concept (yes) and that do not (no)."""

    model_config = ConfigDict(extra="forbid")
    yes: list[StrictInt] = Field(default_factory=list, description="Photo ids marked “yes, this”")
    no: list[StrictInt] = Field(default_factory=list, description="Photo ids marked “not this”")


def concept_status(exc: ConceptError) -> int:
    """The HTTP status of a ConceptError: 404 for a concept (or an example of it) that does not
    exist, else 400."""
    from retriever.concepts import ConceptNotFound

    return 404 if isinstance(exc, ConceptNotFound) else 400


def register_concepts(app: FastAPI, service: Service, image_id: Callable[[str], int]) -> None:
    """The /api/concepts routes. image_id: the app's check of an id in a path (a 404 otherwise)."""
    collection = service.collection

    def number(value: str, what: str) -> int:
        try:
            return image_id(value)
        except NotFound:
            raise NotFound(f"no such {what}: {value[:40]!r}") from None

    @app.get("/api/concepts", summary="The concepts learned in this index: name, model, examples, fit")
    def list_concepts():
        found = collection.concepts()
        return {"count": len(found), "concepts": found}

    @app.post("/api/concepts", summary="Import a concept exported from an index of the same model "
                                       "(GET /api/concepts/{name}/export); its examples are added and it is refitted")
    def import_concept(data: dict[str, Any] = Body(..., description="The export's JSON"),
                       name: str | None = Query(None, description="Store it under this name (default: its own)")):
        if name is not None:
            check_name(name)
        return _with_examples(collection.import_concept(data, name))

    @app.get("/api/concepts/{name}", summary="One concept with its examples (photo id, label, source)")
    def show(name: str):
        return collection.concept(check_name(name))

    @app.get("/api/concepts/{name}/export", summary="A concept as JSON (its model and its examples' vectors), "
                                                    "for POST /api/concepts on another server of the same model")
    def export(name: str):
        return collection.export_concept(check_name(name))

    @app.post("/api/concepts/{name}/marks", summary="Relevance feedback: mark catalog photos “yes, this” / “not "
                                                    "this”; creates the concept on a first yes and refits it at once")
    def mark(name: str, marks: Marks):
        name = check_name(name)
        yes, no = _ids(marks.yes, "yes"), _ids(marks.no, "no")
        if not yes and not no:
            raise ServeError('give photo ids to mark: {"yes": [ID, ...], "no": [ID, ...]}')
        if len(yes) + len(no) > MAX_MARKS:
            raise ServeError(f"at most {MAX_MARKS} photos in one request")
        both = sorted(set(yes) & set(no))
        if both:
            raise ServeError(f"photo {both[0]} is marked both yes and no")
        return _with_examples(collection.mark(name, yes=yes, no=no))

    @app.post("/api/concepts/{name}/images", summary="Add an uploaded photo (from outside the collection or not) "
                                                     "as an example; creates the concept on a first yes")
    def add_image(request: Request, name: str, file: UploadFile = File(..., description="An image file"),
                  label: str = Query("yes", description="yes: it shows the concept; no: it does not")):
        _refuse_cross_site(request)
        name = check_name(name)
        if label not in ("yes", "no"):
            raise ServeError("label is yes or no")
        vector = service.upload_vector(upload_bytes(file), file.filename or "upload")
        return _with_examples(_add_vector(service, name, vector, file.filename or "upload", label == "yes"))

    @app.delete("/api/concepts/{name}", summary="Remove a concept and its examples")
    def remove(name: str):
        shown = collection.concept(check_name(name))["name"]  # a 404 for one that does not exist
        collection.remove_concept(shown)
        return {"name": shown, "removed": True}

    @app.delete("/api/concepts/{name}/examples/{example}",
                summary="Drop one example (its number in GET /api/concepts/{name}) and refit")
    def drop_example(name: str, example: str):
        name = check_name(name)
        return _with_examples(collection.remove_concept(name, examples=[number(example, "example")]))

    @app.delete("/api/concepts/{name}/photos/{photo}",
                summary="Forget the mark of one catalog photo (undo “yes, this” / “not this”) and refit")
    def unmark(name: str, photo: str):
        name = check_name(name)
        return _with_examples(collection.remove_concept(name, ids=[number(photo, "photo")]))

    def _with_examples(described: dict[str, Any] | None) -> dict[str, Any]:
        """What a write returns: the concept as GET /api/concepts/{name} shows it (the page shows
        which photos are marked from its examples)."""
        return collection.concept(described["name"])


def _refuse_cross_site(request: Request) -> None:
    """A form on another site can POST multipart/form-data to a server that needs no token (a
    "simple" request: no CORS preflight), so an upload that writes refuses what a browser marks as
    coming from another origin. (The JSON writes need no check: a cross-origin JSON request is
    preflighted and refused, and a text/plain body is not JSON to FastAPI.)"""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
            origin is not None and urlsplit(origin).netloc != request.headers.get("host", "")):
        raise ServeError("refused: a request from another site", status=403)


def _ids(values: list[int], what: str) -> list[int]:
    for value in values:
        if not 0 <= value <= MAX_ID:
            raise ServeError(f"{what}: not a photo id: {value}")
    return list(dict.fromkeys(values))


def _add_vector(service: Service, name: str, vector, filename: str, positive: bool) -> dict[str, Any]:
    """An uploaded photo's vector as a new example of concept `name` (stored without a photo id:
    it need not be in the collection)."""
    from retriever.concepts import add_examples

    searcher = service.current()
    images, negatives = ([filename], []) if positive else ([], [filename])
    return add_examples(service.index, name, images=images, negatives=negatives, source="upload",
                        image_vector=lambda _path: (vector, None), vectors=searcher.vectors)
