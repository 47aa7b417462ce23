"""The one façade over an index: `open()` gives a `Collection`, which the command line, the warm
daemon, the HTTP server and Python scripts all stand on. It is the only place that builds a
`Searcher` for them, and it owns the warm state a long-lived process keeps:

    the query encoder   chosen once (the index's ONNX export when it holds a checked one and the
                        model runs on the CPU, else PyTorch, loaded on first need), behind a lock
                        (one forward pass at a time, whatever thread asks) with an LRU of texts;
    the Searcher        rebuilt when an indexing run commits new checkpoints (the catalog's
                        generation moved) or `retriever optimize` replaced the FAISS file; only
                        one thread rebuilds, the others keep the old one meanwhile.

Everything raises typed errors (retriever.errors); nothing prints."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from retriever.api_concepts import ConceptMethods
from retriever.errors import RetrieverError

if TYPE_CHECKING:  # pragma: no cover
    from retriever.filters import Filters
    from retriever.indexer import RunSummary
    from retriever.ocr.run import OcrSummary
    from retriever.regions import RegionSummary
    from retriever.progress import Progress
    from retriever.search import Hit, Searcher
    from retriever.vlm.ask import AskResult
    from retriever.vlm.locate import Located

TEXT_CACHE_SIZE = 1024  # query texts whose embeddings a warm collection remembers
DEFAULT_K = 10


class ReadOnlyError(RetrieverError):
    """A write (index) on a collection opened read-only."""


@dataclass(frozen=True)
class NewIndex:
    """How a writable open creates an index that does not exist yet (an existing one keeps its
    model; asking for another is a ModelMismatchError)."""

    model: str | None = None  # offline, an open_clip architecture, hf-hub:..., a config .json; None: the default
    pretrained: str | None = None  # an open_clip tag or a local weights file
    batch_size: int | None = None  # images per forward pass; None: 32 on CPU, 256 on CUDA
    onnx_export: bool = True  # export both towers to ONNX (checked against PyTorch) when it is created
    backend: str = "auto"  # what runs the image tower on the CPU: auto, onnx, pytorch
    cache_dir: str | None = None  # the shared model cache (None: $RETRIEVER_CACHE_DIR, else the user's cache)
    precision: str | None = None  # the image tower: "fp32" (None: fp32 for a new index, any for an existing one) or "int8"


def open(home: str | Path | None = None, index: str = "default", *, writable: bool = False,
         device: str = "auto", new: NewIndex | None = None,
         on_message: Callable[[str], None] | None = None, one_query: bool = False) -> "Collection":
    """Open the index `index` under `home` (None: $RETRIEVER_HOME, else ./indexes).

    Read-only by default: searches read the last committed checkpoint while an indexer writes.
    writable=True takes the index's writer lock (an IndexLockedError while another process
    writes) and creates the index when it does not exist yet, with `new`'s model. `on_message`
    hears what a user may want to know while it opens and indexes (loading a model, the image
    encoder chosen); a note on the new index (an ONNX export refused) is left in `.note`.
    one_query: the collection answers one search and goes (the command line without a daemon):
    the catalog read through sqlite3 without SQLAlchemy, ONNX sessions that start fast; such a
    collection searches but has no status."""
    from retriever.index import Index, open_for_writing, resolve_home

    home_dir = resolve_home(Path(home).expanduser() if home is not None else None)
    if not writable:
        return Collection(Index.open(home_dir, index, read_only=one_query), device=device, one_shot=one_query)
    new = new or NewIndex()
    say = on_message or (lambda message: None)
    if not Index.exists(home_dir, index):
        say(f"creating index {index!r} in {home_dir}: loading the model ...")
    idx, encoder, note = open_for_writing(
        home_dir, index, model=new.model, pretrained=new.pretrained, device=device, batch_size=new.batch_size,
        onnx_export=new.onnx_export, backend=new.backend, on_backend=lambda why: say(f"image encoder: {why}"),
        cache_dir=new.cache_dir, precision=new.precision,
    )
    collection = Collection(idx, device=device, indexing_encoder=encoder, batch_size=new.batch_size, on_message=say)
    collection.note = note
    return collection


class Collection(ConceptMethods):
    """One opened index and its warm state. Use it as a context manager (or call close()).

    The public methods are search, similar, index, status, ask and locate; the rest serves
    retriever's own front ends (the command line, the daemon, the HTTP server)."""

    def __init__(self, idx, *, device: str = "auto", encoder=None, query_threads: int | None = None,
                 one_shot: bool = False, reload_check_s: float = 1.0, indexing_encoder=None,
                 batch_size: int | None = None, on_message: Callable[[str], None] | None = None):
        """idx: an opened retriever.index.Index. encoder: a loaded encoder of its model for
        queries (None: the choice a local search makes). one_shot: this collection answers one
        query and goes (a CLI search without a daemon): ONNX sessions that start faster.
        query_threads: intra-op threads of its ONNX sessions (None: onnxruntime's default).
        reload_check_s: how often a warm collection looks for new checkpoints."""
        self.idx = idx
        self.device = device
        self.model_lock = threading.Lock()
        self.reload_check_s = reload_check_s
        self.reloads = 0
        self._query_encoder = LockedEncoder(
            encoder if encoder is not None else QueryEncoder(idx, device, threads=query_threads, one_shot=one_shot),
            self.model_lock)
        self._searcher: Searcher | None = None
        self._generation: int | None = None
        self._reload_lock = threading.Lock()
        self._last_check = time.monotonic()
        self._indexing_encoder = indexing_encoder
        self._batch_size = batch_size
        self._say = on_message or (lambda message: None)
        self.note: str | None = None  # for the user, from opening: an ONNX export refused
        self._vlms: dict[str, Any] = {}  # vision-language models loaded by ask / locate, by spec
        self._vlm_lock = threading.Lock()  # one generation at a time

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self._settle_export(cancel=False)
        finally:
            self.idx.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self._settle_export(cancel=exc_type is not None)
        finally:
            self.close()

    def _settle_export(self, cancel: bool) -> str | None:
        """A new index's export still being prepared in a child (retriever.onnx.prepare): waited
        for and attached, or (an interrupted run, an error) stopped. -> what the preparation did,
        in words, for the run summary (None: there was none, or it was stopped)."""
        encoder, settle = self._indexing_encoder, None
        if encoder is not None and hasattr(encoder, "finish"):
            settle = encoder.cancel if cancel else encoder.finish
        if settle is None:
            return None
        self._indexing_encoder = encoder.resolved or (lambda: self.idx.indexing_encoder(
            self.device, self._batch_size))
        settle()
        return None if cancel else getattr(encoder, "outcome", None)

    @property
    def name(self) -> str:
        return self.idx.name

    @property
    def folder(self) -> Path:
        return self.idx.folder

    @property
    def model_id(self) -> str:
        return self.idx.model_id

    # -- the public API -------------------------------------------------------------------------

    def search(self, query: str | Sequence[str], k: int = DEFAULT_K, *, keywords: bool = True, adapter: bool = True,
               **filters: Any) -> list["Hit"]:
        """Photos matching `query`, best first: the command line's query language. A string is
        read as a search box reads it (`beach - people`, `"a red car" + 0.5*night`); a list is
        the command line's words. Filters as keywords: after, before, folders, cameras, near,
        within_km, formats, min_size, tags (all), tags_any (any), no_tags (none), texts (the
        photo's text contains each: see read_text), concepts (each says yes: see add_concept),
        min_score (see `retriever search --help`). An empty query with `texts` lists the photos
        by their text, best match first; with `concepts`, by the concepts. A query of concepts
        alone (`concept:rex`) re-scores its best photos by their neighbours' scores (see
        retriever.concept_fit.smooth_by_neighbours). adapter=False: text terms without the
        index's adapter (`retriever adapt`)."""
        from retriever.query import parse, words_of

        words = words_of(query) if isinstance(query, str) else list(query)
        terms = parse(words, default="auto") if words else []
        return self.query(terms, k, self.filters(**filters), keywords=keywords, adapter=adapter)

    def similar(self, images: str | Path | Sequence[str | Path], k: int = DEFAULT_K, **filters: Any) -> list["Hit"]:
        """Photos that look like `images` (paths inside or outside the collection; several are
        averaged; the collection's own are left out). Filters as in search."""
        from retriever.query import parse

        paths = [images] if isinstance(images, (str, Path)) else list(images)
        terms = parse([str(Path(p).expanduser()) for p in paths], default="image")
        return self.query(terms, k, self.filters(**filters))

    def index(self, paths: Iterable[str | Path], *, progress: Callable[["Progress"], None] | None = None,
              engine: str = "local", ray=None, **options: Any) -> "RunSummary":
        """Add the photos under `paths` (folders, files, fsspec URLs) as `retriever index` does:
        incremental, checkpointed, resumable. Options: include_hidden, exclude, workers, pool,
        retry_failed, video_every_s, ocr (retriever.indexer.IndexOptions). progress(Progress) is
        called as files are handled. engine="ray" runs on a Ray cluster (ray: RayOptions).
        Only on a collection opened writable=True."""
        if self._indexing_encoder is None:
            raise ReadOnlyError("this collection was opened read-only: retriever.open(..., writable=True) to index")
        from retriever.indexer import IndexOptions, run_index

        roots = [str(p) for p in paths]
        encoder = self._indexing_encoder
        if callable(encoder) and not hasattr(encoder, "embed_texts"):
            load = encoder

            def encoder():
                self._say(f"files to read: loading {self.idx.model_id} ...")
                return load()

        index_options = IndexOptions(**options)
        if engine == "ray":
            from retriever.distributed import RayOptions, run_index_ray

            summary = run_index_ray(self.idx, encoder, roots, index_options, ray or RayOptions(), on_progress=progress,
                                    device=self.device, batch_size=self._batch_size)
            summary.preparation = self._settle_export(cancel=summary.interrupted)
            self._read_rest(summary, index_options, progress)
            return summary
        summary = run_index(self.idx, encoder, roots, index_options, on_progress=progress)
        summary.preparation = self._settle_export(cancel=summary.interrupted)
        self._read_rest(summary, index_options, progress)
        return summary

    def _read_rest(self, summary, options, progress) -> None:
        """With ocr: the text of the indexed photos this run did not decode (indexed before,
        copies of known content, a Ray run), read after the run. With regions: the region vectors
        of every photo that has none yet."""
        if options.regions and not summary.interrupted and not summary.error:
            done = self.add_regions(progress=progress)
            summary.region_photos += done.photos
            summary.regions += done.regions
            summary.interrupted = done.interrupted
            summary.failures.extend(done.failures)
        if not options.ocr or summary.interrupted or summary.error:
            return
        from retriever.ocr.run import run_ocr

        rest = run_ocr(self.idx, on_progress=progress)
        summary.text_read += rest.read
        summary.text_found += rest.with_text
        summary.interrupted = rest.interrupted
        summary.failures.extend(rest.failures)

    def status(self) -> dict[str, Any]:
        """Where the index lives, its model, counts, vector index, tags, ONNX export, last run."""
        return self.idx.status()

    def untag(self, path: str | Path, label: str) -> int:
        """Remove a wrong tag from a photo (every frame of a video). The removal is remembered:
        later `retriever tag` runs never give it back. Returns how many tags were removed."""
        from retriever.tags import untag_in_index

        return untag_in_index(self.idx, str(Path(path).expanduser()), label)

    def add_regions(self, *, limit: int | None = None, dense: bool | None = None, levels=None,
                    progress: Callable[["Progress"], None] | None = None) -> "RegionSummary":
        """Encode region vectors for the photos that have none yet, as `retriever optimize
        --regions` does (incremental, resumable, committed in batches; only the crops are
        encoded). Searches then score each photo by its best region too and say where
        (`box`). dense: one pass over each photo (the offline encoder's feature maps) instead of
        one encoder pass per crop; None: dense for the offline encoder, crops for the others.
        levels: the grid levels (None: the scheme's fitted ones).
        Only on a collection opened writable=True."""
        if self._indexing_encoder is None:
            raise ReadOnlyError("this collection was opened read-only: retriever.open(..., writable=True) for regions")
        from retriever.encoders.base import OFFLINE_MODEL_ID
        from retriever.regions import run_regions

        encoder = self._indexing_encoder
        if dense is None:
            dense = self.idx.model_id == OFFLINE_MODEL_ID
        if dense:  # one pass a photo through the CNN's feature maps: ONNX Runtime on the CPU, else PyTorch
            encoder = self._dense_region_encoder  # called when something needs encoding
        summary = run_regions(self.idx, encoder, limit=limit, dense=dense, levels=levels, on_progress=progress)
        self._searcher = None  # the next search loads the new region file
        return summary

    def _dense_region_encoder(self):
        """The dense region pass: the export's regions tower (ONNX Runtime) when the encoder runs
        on the CPU and the export has one, else the PyTorch encoder."""
        from retriever.encoders.base import resolve_device, surely_cpu
        from retriever.onnx import onnx_regions_for

        on_cpu = surely_cpu(self.device) or resolve_device(self.device) == "cpu"
        return (onnx_regions_for(self.idx) if on_cpu else None) or self.idx.load_encoder(self.device)

    def read_text(self, *, frames: bool = False, limit: int | None = None,
                  progress: Callable[["Progress"], None] | None = None) -> "OcrSummary":
        """Read the text in the photos whose text was not read yet, as `retriever ocr` does
        (incremental, resumable, committed in batches; needs the `ocr` extra). The text is then
        found by search (its words) and by the `texts` filter (any part of it)."""
        from retriever.ocr.run import run_ocr

        return run_ocr(self.idx, frames=frames, limit=limit, on_progress=progress)

    def photo_text(self, path: str | Path) -> dict[str, Any] | None:
        """The text read in the photo at `path`: {"lines": [{"text", "score", "box", "quad"}],
        "text", "engine", "created_at"}, boxes in the photo's pixels; None when its text was not
        read yet. A path that is not indexed: a RetrieverError."""
        from retriever.files import absolute
        from retriever.ocr.run import photo_text

        full = absolute(str(Path(path).expanduser()))
        row = self.idx.catalog.find_by_path(full)
        if row is None:
            raise RetrieverError(f"{full} is not in index {self.name!r}")
        return photo_text(self.idx.catalog, row["id"])

    def ask(self, question: str, k: int = 4, *, vlm: Any = None, images: Sequence[str | Path] | None = None,
            boxes: bool = False, max_new_tokens: int = 256, **filters: Any) -> "AskResult":
        """`retriever ask`: the k photos that match `question` best (filters as in search), or the
        files `images`, shown to a vision-language model in one chat; the answer cites them by
        number. boxes: also where, each photo's `boxes` ([x0, y0, x1, y1] in its pixels, label;
        a model that writes boxes: Qwen2-VL, Qwen2.5-VL, Qwen3-VL). vlm: a model folder or hub id
        (None: the default), or a loaded model (retriever.vlm.model.load_vlm); loaded once, kept."""
        from retriever.vlm.ask import ask_about

        model = self._vlm(vlm)
        if images:
            items: list[Any] = [str(Path(p).expanduser()) for p in images]
        else:
            items = self.text(" ".join(question.split()), k, self.filters(**filters))
            if not items:
                raise RetrieverError("no photos to ask about: " + ("the index is empty" if self.is_empty()
                                                                  else "nothing passes the filters"))
        with self._vlm_lock:
            return ask_about(model, question, items, max_new_tokens, boxes=boxes)

    def locate(self, query: str, path: str | Path, *, vlm: Any = None, max_new_tokens: int = 128) -> "Located":
        """`retriever locate`: the boxes a vision-language model gives for `query` on the photo at
        `path` (any file): `.boxes`, each `.box` [x0, y0, x1, y1] in the photo's pixels after EXIF
        orientation and `.label`; none when the model finds nothing. vlm as in ask (None:
        florence-community/Florence-2-base); a model that writes no boxes: a NoGroundingError."""
        from retriever.vlm.locate import locate
        from retriever.vlm.models import DEFAULT_LOCATE

        model = self._vlm(vlm, DEFAULT_LOCATE)
        with self._vlm_lock:
            return locate(model, query, str(Path(path).expanduser()), max_new_tokens=max_new_tokens)

    def _vlm(self, vlm: Any, default: str | None = None):
        if vlm is not None and not isinstance(vlm, (str, Path)):
            return vlm  # already loaded
        spec = str(vlm) if vlm is not None else default
        with self._vlm_lock:
            if (spec or "") not in self._vlms:
                from retriever.vlm.model import load_vlm

                self._vlms[spec or ""] = load_vlm(spec, self.device, adapter_from=self.idx.folder)
            return self._vlms[spec or ""]

    def finetune_vlm(self, training_file: str | Path | None = None, *, vlm: Any = None, index_captions: bool = False,
                     options: Any = None, progress: Callable[[Any], None] | None = None) -> Any:
        """`retriever finetune-vlm`: a LoRA adapter of the VLM trained on (photo, caption or
        question and answer) pairs, stored in the index; ask, caption and reranking use it then.
        options: retriever.vlm.finetune.FinetuneOptions. Returns a FinetuneResult."""
        from retriever.vlm.finetune import finetune_vlm
        from retriever.vlm.model import load_vlm

        model = vlm if vlm is not None and not isinstance(vlm, (str, Path)) else load_vlm(vlm, self.device)
        with self._vlm_lock:
            result = finetune_vlm(self.idx, model, training_file, index_captions=index_captions, options=options,
                                  on_step=progress)
            self._vlms.clear()  # the next use loads the model with its new adapter
        return result

    # -- for retriever's front ends -------------------------------------------------------------

    def failures(self) -> list[dict[str, Any]]:
        """The files that could not be indexed: path, error, indexed_at."""
        return self.idx.catalog.failures()

    @staticmethod
    def filters(**values: Any) -> "Filters":
        """Keyword filter values -> a Filters (unknown names and bad values: a RetrieverError)."""
        from retriever.filters import build

        return build(**values)

    def query(self, terms, k: int, filters: "Filters | None" = None, *, keywords: bool = False,
              adapter: bool = True) -> list["Hit"]:
        """Parsed query terms -> hits (keywords: fused with FTS5 matches of the text terms)."""
        searcher = self.searcher()
        searcher.last_strategy = None
        if not terms and filters is not None and filters.concepts:  # --concept alone: ranked by the concepts
            from retriever.query import CONCEPT, Term

            terms = [Term(CONCEPT, name, 1.0) for name in filters.concepts]
        elif not terms and filters is not None and filters.texts:  # --text alone: photos by their text
            return searcher.text_matches(filters, k)
        search = searcher.hybrid if keywords else searcher.query
        return search(terms, k, filters=filters, adapter=adapter)

    def text(self, text: str, k: int, filters: "Filters | None" = None) -> list["Hit"]:
        """Hits for one text, embedded as it is (no query language): what ask shows the model."""
        return self.searcher().text(text, k, filters=filters)

    @property
    def last_strategy(self) -> str | None:
        """How the last filtered search ran ("selector" or "overfetch"), or None."""
        return self._searcher.last_strategy if self._searcher is not None else None

    @property
    def query_encoder(self) -> "LockedEncoder":
        return self._query_encoder

    def query_backend(self) -> str | None:
        """The class that embeded query texts so far ("OnnxEncoder": no torch), or None."""
        return self._query_encoder.loaded_backend

    def is_empty(self) -> bool:
        return self.idx.catalog.counts()["images"] == 0

    def warm(self) -> None:
        """Load the FAISS index and run one forward pass now, not on the first request."""
        _ = self.searcher().vectors
        self._query_encoder.embed_texts(["warm up"])

    @property
    def generation(self) -> int:
        self.searcher()
        return self._generation

    def searcher(self) -> "Searcher":
        """The Searcher for one request: a new one when the catalog's generation moved."""
        if self._searcher is None:
            with self._reload_lock:
                if self._searcher is None:
                    self._build(self.idx.catalog.generation())
            return self._searcher
        now = time.monotonic()
        if now - self._last_check >= self.reload_check_s:
            self._last_check = now
            generation = self.idx.catalog.generation()
            if generation != self._generation and self._reload_lock.acquire(blocking=False):
                try:
                    if generation != self._generation:
                        self._build(generation)
                        self.reloads += 1
                finally:
                    self._reload_lock.release()
        return self._searcher

    def reload(self) -> None:
        """A new Searcher now, whatever the generation (the FAISS file was replaced by
        `retriever optimize`, which keeps the generation)."""
        with self._reload_lock:
            self._build(self.idx.catalog.generation(), load=True)
            self.reloads += 1

    def _build(self, generation: int, load: bool = False) -> None:
        from retriever.search import Searcher

        fresh = Searcher(self.idx, encoder=self._query_encoder, device=self.device)
        if self._searcher is not None and not load:
            fresh.previous_vectors = self._searcher._vectors  # extended by the delta log's new records
        if load or self._searcher is not None:
            _ = fresh.vectors  # the FAISS file (and its log) when current, else rebuilt from the catalog
        self._searcher, self._generation = fresh, generation


class QueryEncoder:
    """Embeds queries the way a local `retriever search` does: the index's ONNX export for texts
    (and for images when it holds torch-free preprocessing), else PyTorch, loaded only when first
    needed (retriever.search.Searcher.query_encoder decides).

    one_shot: the ONNX session options of a one-shot CLI search (see retriever.onnx.make_session),
    which move embeddings by ~1e-7: the daemon takes the local search's, so the scores it prints
    are the local run's to the last digit. threads: intra-op threads of the ONNX sessions (None:
    onnxruntime's default). The result does not depend on it, the latency does: one query at a
    time on a busy CPU is faster on one thread."""

    def __init__(self, index, device: str = "auto", *, threads: int | None = None, one_shot: bool = False):
        from retriever.search import Searcher

        self._local = Searcher(index, device=device, one_shot=one_shot, onnx_threads=threads)
        self.model_id = index.model_id
        self.dim = index.dim

    @property
    def loaded(self):
        """The encoder that embedded queries so far, or None."""
        return self._local.loaded_query_encoder

    @property
    def text_backend(self) -> str:
        """The class that embeds texts (OnnxEncoder when torch is not used)."""
        return type(self._local.query_encoder).__name__

    def embed_texts(self, texts):
        return self._local.query_encoder.embed_texts(texts)

    def embed_images(self, images):
        encoder = self._local.query_encoder
        if not getattr(encoder, "embeds_images", True):
            encoder = self._local.encoder
        return encoder.embed_images(images)


class LockedEncoder:
    """An encoder behind a lock: one forward pass at a time, whatever thread asks. Text
    embeddings are remembered (LRU): a query asked again (another filter, the next page, the CLI
    repeating it) skips the forward pass."""

    def __init__(self, encoder, lock: threading.Lock, cache_size: int = TEXT_CACHE_SIZE):
        self._encoder = encoder
        self._lock = lock
        self._texts: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._used = False

    def embed_texts(self, texts):
        import numpy as np

        texts = list(texts)
        with self._cache_lock:
            cached = [self._texts.get(t) for t in texts]
            for t in texts:
                if t in self._texts:
                    self._texts.move_to_end(t)
        missing = [t for t, v in zip(texts, cached) if v is None]
        if missing:
            with self._lock:
                self._used = True
                fresh = dict(zip(missing, self._encoder.embed_texts(missing)))
            with self._cache_lock:
                for t, v in fresh.items():
                    self._texts[t] = v
                while len(self._texts) > self._cache_size:
                    self._texts.popitem(last=False)
            cached = [v if v is not None else fresh[t] for t, v in zip(texts, cached)]
        return np.stack([np.asarray(v) for v in cached]) if cached else self._encoder.embed_texts([])

    def embed_images(self, images):
        with self._lock:
            self._used = True
            return self._encoder.embed_images(images)

    @property
    def text_backend(self) -> str:
        """The class that embeds texts (for messages)."""
        return getattr(self._encoder, "text_backend", None) or type(self._encoder).__name__

    @property
    def loaded_backend(self) -> str | None:
        """text_backend once a query has needed the encoder, else None."""
        loaded = getattr(self._encoder, "loaded", None) if isinstance(self._encoder, QueryEncoder) else self._used
        return self.text_backend if loaded else None

    def __getattr__(self, name):
        return getattr(self._encoder, name)
