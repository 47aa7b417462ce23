"""The FastAPI app over a Service (retriever.serve.service): the JSON API under /api, the page at / (static files shipped in
the package), OpenAPI at /openapi.json.

Every error is JSON, {"error": "...", "status": N}: a RetrieverError is the client's fault (4xx,
its one-line message), anything else is a 500 whose body says nothing about the code. Handlers
are plain functions: FastAPI runs them in its thread pool, so requests proceed concurrently and
only model calls are serialised (see retriever.api.Collection)."""

from __future__ import annotations

import hmac
import json
import mimetypes
import os
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any, Iterable
from urllib.parse import parse_qs

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from retriever import __version__
from retriever.concepts import ConceptError
from retriever.errors import ImageDecodeError, RetrieverError
from retriever.filters import build
from retriever.serve.client import TOKEN_HEADER
from retriever.serve.concepts import concept_status, register_concepts
from retriever.serve.service import MAX_UPLOAD_BYTES, NotFound, ServeError, Service, upload_bytes

TOKEN_COOKIE = "retriever_token"
STATIC = resources.files("retriever.serve") / "static"
CHUNK = 256 << 10


def create_app(service: Service, *, token: str | None = None, allowed_hosts: Iterable[str] | None = None) -> FastAPI:
    """token: when set, every request needs it (header X-Retriever-Token, Authorization: Bearer,
    ?token= or the cookie the page gets). allowed_hosts: Host header values accepted (guards a
    loopback server against DNS rebinding); None accepts any. A set is kept, not copied: a server
    on port 0 adds the real port's names once it knows them."""
    app = FastAPI(title="retriever", version=__version__, docs_url="/docs", redoc_url=None,
                  description="Search a photo collection by text or by example.")
    app.state.service = service
    _error_handlers(app)
    _routes(app, service)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if allowed_hosts is not None and not isinstance(allowed_hosts, set):
        allowed_hosts = set(allowed_hosts)
    app.add_middleware(_Guard, token=token, allowed_hosts=allowed_hosts)
    return app


# -- errors -----------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    def serve_error(request: Request, exc: ServeError):
        return _error(exc.status, str(exc))

    @app.exception_handler(ImageDecodeError)
    def decode_error(request: Request, exc: ImageDecodeError):
        message = str(exc)
        status = 413 if message.startswith(("too large", "refused")) else 415
        return _error(status, f"not a usable image: {message}")

    @app.exception_handler(ConceptError)
    def concept_error(request: Request, exc: ConceptError):
        return _error(concept_status(exc), str(exc))

    @app.exception_handler(RetrieverError)
    def retriever_error(request: Request, exc: RetrieverError):
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return _error(exc.status_code, "not found" if exc.status_code == 404 else message, exc.headers)

    @app.exception_handler(RequestValidationError)
    def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    def internal_error(request: Request, exc: Exception):
        return _error(500, "internal error")


# -- routes -----------------------------------------------------------------------------------------


def _filters(
    after: str | None = Query(None, description="Taken on or after DATE (2023, 2023-06-15, 30d, ...)"),
    before: str | None = Query(None, description="Taken before DATE (exclusive)"),
    folders: list[str] = Query([], alias="in", description="Only photos under this absolute folder (repeatable)"),
    camera: list[str] = Query([], description="Camera make or model contains TEXT (repeatable: any)"),
    near: str | None = Query(None, description="LAT,LON"),
    within: float | None = Query(None, description="km around near (default 1)"),
    format: list[str] = Query([], description="jpeg, png, heif, ... or video (repeatable: any)"),
    min_size: str | None = Query(None, description="N or WxH"),
    tag: list[str] = Query([], description="Tagged LABEL (repeatable or comma-separated: all)"),
    tag_any: list[str] = Query([], description="Tagged with at least one of these labels (comma-separated)"),
    no_tag: list[str] = Query([], description="Not tagged LABEL (repeatable or comma-separated: none)"),
    text: list[str] = Query([], description="The photo's text (read by retriever ocr) contains TEXT, ignoring case, "
                                            "accents, spaces and punctuation (repeatable: all)"),
    concept: list[str] = Query([], description="Only photos concept NAME says yes to (repeatable or comma-separated: "
                                               "all; see /api/concepts); alone in a search: ranked by it"),
    min_score: float | None = Query(None, description="Drop results scoring below this"),
):
    for folder in folders:
        if not os.path.isabs(os.path.expanduser(folder)):
            raise ServeError(f"'in' takes an absolute folder, not {folder!r}")
    return build(after=after, before=before, folders=folders, cameras=camera, near=near, within_km=within,
                 formats=format, min_size=min_size, tags=tag, tags_any=tag_any,
                 no_tags=no_tag, texts=text, concepts=concept, min_score=min_score)


def _results(hits, **extra: Any) -> dict[str, Any]:
    return {**extra, "count": len(hits), "results": [h.as_dict() for h in hits]}


def _box(text: str) -> tuple[float, float, float, float]:
    """box=x0,y0,x1,y1 (the photo's pixels) -> numbers, or a 400 saying what is wrong."""
    from retriever.query import split_region

    try:
        _, box = split_region("photo@" + text.replace(" ", ""))
    except RetrieverError as exc:
        raise ServeError(str(exc)) from None
    if box is None:
        raise ServeError("box must be four numbers x0,y0,x1,y1")
    return box


def _image_id(image_id: str) -> int:
    if not (image_id.isascii() and image_id.isdigit()) or len(image_id) > 18:  # not "²" or "٣"
        raise NotFound("no such image")
    return int(image_id)


def _routes(app: FastAPI, service: Service) -> None:
    from fastapi import Depends

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/api/status", summary="The index, its model and counts, and whether ask is available")
    def status():
        return service.status()

    @app.get("/api/search", summary="Photos matching a query (the CLI's query language, text terms); with text= "
                                    "and no query: the photos with that text, best match first")
    def search(q: str | None = Query(None, description="Search-box text: words between + and - form one "
                                                        "phrase: a cat on a sofa - dog, 'red car' - 0.5*night. "
                                                        "Optional with text="),
               w: list[str] = Query([], description="Or the command-line words exactly (repeatable), as "
                                                    "retriever search gets them"),
               k: int = Query(10, description="How many results"),
               keywords: bool = Query(True, description="Fuse keyword matches in file names and captions"),
               filters=Depends(_filters)):
        if q is None and not w and not filters.texts and not filters.concepts:
            raise ServeError("give q=TEXT (or w=WORD, repeated; or text=TEXT for the photos with that text; or "
                             "concept=NAME for the photos ranked by a concept)", status=422)
        hits = service.search(q, k, filters, keywords=keywords, words=w or None)
        return _results(hits, query=q if q is not None else (w or ""), filters=filters.describe())

    @app.get("/api/similar", summary="Photos like catalog images, by id (repeatable: averaged)")
    def similar(id: list[str] = Query([], description="Catalog id (repeatable)"),
                path: str | None = Query(None, description="Look up an indexed path in the catalog (never opened)"),
                size: int | None = Query(None), mtime_ns: int | None = Query(None),
                box: str | None = Query(None, description="x0,y0,x1,y1: a part of the photo (its pixels), one id"),
                k: int = Query(10), filters=Depends(_filters)):
        ids = [_image_id(i) for i in id]
        if path is not None:
            ids.append(service.id_for_path(path, size, mtime_ns))
        if not ids:
            raise ServeError("give id=ID (or upload a photo with POST)")
        region = _box(box) if box is not None else None
        return _results(service.similar_to_ids(ids, k, filters, box=region), ids=ids, filters=filters.describe(),
                        **({"box": list(region)} if region else {}))

    @app.post("/api/similar", summary="Photos like an uploaded photo")
    def similar_upload(request: Request, file: UploadFile = File(..., description="An image file"),
                       k: int = Query(10), filters=Depends(_filters)):
        hits = service.similar_to_upload(upload_bytes(file), file.filename or "upload", k, filters)
        return _results(hits, filters=filters.describe())

    @app.get("/api/ask", summary="Answer a question from the best-matching photos (needs serve --vlm)")
    def ask(q: str = Query(...), k: int = Query(4),
            boxes: bool = Query(False, description="Also where: each photo's boxes from the answer "
                                                   "(a model that writes boxes: Qwen2-VL, ...)"),
            filters=Depends(_filters)):
        return service.ask(q, k, filters, boxes=boxes)

    @app.get("/api/locate", summary="Where a phrase is in one catalog photo: the VLM's boxes in the photo's "
                                    "pixels (needs serve --vlm with Florence-2, PaliGemma, Qwen2-VL, ...)")
    def locate(q: str = Query(..., description="What to find: the red car"),
               id: str = Query(..., description="Catalog id of the photo")):
        return service.locate(q, _image_id(id))

    register_concepts(app, service, _image_id)

    @app.get("/api/images/{image_id}/meta", summary="One photo's metadata, as in search results")
    def meta(image_id: str):
        return service.meta(_image_id(image_id))

    @app.get("/api/images/{image_id}/text",
             summary="The text read in a photo (retriever ocr): its lines with boxes in the photo's pixels")
    def text(image_id: str):
        return service.text(_image_id(image_id))

    @app.delete("/api/images/{image_id}/tags/{label}",
                summary="Remove a wrong tag from a photo (remembered: re-tagging keeps it off)")
    def untag(image_id: str, label: str):
        return service.untag(_image_id(image_id), label)

    @app.get("/api/images/{image_id}/thumbnail", summary="A JPEG thumbnail of a catalog image")
    def thumbnail(image_id: str, side: int = Query(384, ge=32, le=1024)):
        from retriever.render import ThumbnailError

        try:
            data = service.thumbnail_jpeg(_image_id(image_id), side)
        except ThumbnailError as exc:
            raise NotFound(f"no thumbnail: {exc.reason}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/images/{image_id}", summary="The original file of a catalog image")
    def original(image_id: str):
        opened = service.open_original(_image_id(image_id))
        media_type = mimetypes.guess_type(opened.path)[0] or "application/octet-stream"

        def chunks():
            with os.fdopen(opened.fd, "rb") as f:  # closed however the response ends (disconnects too)
                while data := f.read(CHUNK):
                    yield data

        name = os.path.basename(opened.path).encode("ascii", "replace").decode().replace('"', "_")
        return StreamingResponse(chunks(), media_type=media_type, headers={
            "Content-Length": str(opened.size), "Content-Disposition": f'inline; filename="{name}"',
            "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})


# -- token and host checks --------------------------------------------------------------------------


class _Guard:
    """Pure ASGI middleware (nothing buffered, streaming untouched): the Host check, the token
    check, and a Content-Length cap on request bodies (bodies without one are refused)."""

    def __init__(self, app, token: str | None, allowed_hosts: set[str] | None):
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None and headers.get("host", "") not in self.allowed_hosts:
            return await _send_json(send, 400, "host not allowed")
        length = headers.get("content-length")
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # a body of unknown size (chunked) could fill the temp area before any limit applies
            return await _send_json(send, 411, "a request body needs a Content-Length")
        if length is not None and (not length.isdigit() or int(length) > MAX_UPLOAD_BYTES + (64 << 10)):
            return await _send_json(send, 413, f"request too large (limit {MAX_UPLOAD_BYTES >> 20} MB)")
        set_cookie = None
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            in_url = (query.get("token") or [None])[0]
            if in_url is not None and scope["path"] != "/":
                # a token in a URL ends up in logs and histories: only the page's first address has one
                return await _send_json(send, 401, "the token goes in a header (X-Retriever-Token or "
                                                   "Authorization: Bearer), not in the URL", {"www-authenticate": "Bearer"})
            given = [headers.get(TOKEN_HEADER.lower()), in_url]
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given.append(auth[7:].strip())
            cookie = SimpleCookie()
            try:
                cookie.load(headers.get("cookie", ""))
            except Exception:  # a malformed Cookie header is no token
                pass
            if TOKEN_COOKIE in cookie:
                given.append(cookie[TOKEN_COOKIE].value)
            if not any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given):
                return await _send_json(send, 401, "a token is required: header X-Retriever-Token, "
                                                   "Authorization: Bearer TOKEN, or ?token=TOKEN",
                                        {"www-authenticate": "Bearer"})
            if in_url is not None:
                # The page was opened with ?token=: the cookie is set and the browser sent on to
                # the clean address; the page's images and API calls carry the cookie.
                cookie_header = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/"), (b"set-cookie", cookie_header.encode("latin-1")),
                                        (b"content-length", b"0"), (b"cache-control", b"no-store"),
                                        *SECURITY_HEADERS]})
                return await send({"type": "http.response.body", "body": b""})

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_secured)


# On every response: the page runs only its own script and style files (no inline code), is
# never framed, and sends no referrer; nothing is sniffed into another type.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


async def _send_json(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
