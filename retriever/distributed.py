"""The Ray Data engine: decoding and encoding on a Ray cluster, checkpoints on the driver.

    driver: plan (walk or list the URLs, compare with the catalog), as for a local run
    -> ray.data.from_items(tasks)
    -> map_batches(_prepare_batch)          CPU tasks: read (fsspec for URLs), fingerprint, decode,
                                            preprocess -- indexer.prepare, the same function
    -> map_batches(_EncodeActor, ActorPoolStrategy)   one actor per GPU (or per CPU group), each
                                            loading the index's own encoder from its ModelSpec
    -> iter_batches on the driver           indexer's _Run commits one checkpoint per batch

Only the planning and the commits need the catalog, so they stay on the driver, in the same code
as a local run (indexer.run_index with engine=RayEngine): a killed worker's batch is retried by
Ray (actor pools restart dead actors and retry their tasks), and a killed driver resumes from its
last checkpoint when the same command runs again, nothing duplicated.

Every node needs retriever installed (`pip install 'retriever[distributed]'`, plus s3fs or gcsfs
for object storage) and, for open_clip models, the weights at the same local path or in the
hub cache.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import signal
import threading
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from retriever.encoders.base import ModelSpec, auto_device, default_batch_size, surely_cpu
from retriever.errors import MissingDependencyError, ModelMismatchError, RetrieverError
from retriever.indexer import IndexOptions, RunSummary, _Prepared, _Task, prepare, run_index

INSTALL_HINT = "pip install 'retriever[distributed]'"
# Files per decode task: small, so results stream to the encoders (and memory stays bounded:
# about 0.6 MB of encoder input per file).
DECODE_BATCH = 8
DECODE_TASK_MEMORY = 256 << 20
# Without GPUs, one encoder actor per this many CPUs; half the CPUs go to the actors, the rest to
# decoding (never all of them: the decode tasks would wait forever behind the actors).
CPUS_PER_ACTOR_GROUP = 8


class DistributedError(RetrieverError):
    """The Ray cluster could not be reached, or the pipeline failed."""


@dataclass
class RayOptions:
    address: str | None = None  # None: start a Ray instance on this machine; "auto" or "ray://host:10001": join
    actors: int = 0  # encoder actors; 0: one per GPU, or one per CPUS_PER_ACTOR_GROUP CPUs without GPUs
    cpus_per_actor: float = 0  # 0: chosen from the cluster (see plan_resources)
    decode_batch: int = DECODE_BATCH


def import_ray():
    """ray, or MissingDependencyError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - ray without the [data] extra has no pyarrow
    except ImportError:
        raise MissingDependencyError(f"--engine ray needs Ray Data: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Resources:
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    device: str  # the actors' encoder device


def plan_resources(cluster: dict[str, float], options: RayOptions, device: str = "auto") -> Resources:
    """Actors and their resources for a cluster's totals (ray.cluster_resources()) and the
    --device asked for: 'cpu' leaves the GPUs alone, 'cuda' (or 'cuda:N': each actor has its
    own GPU) needs the cluster to have GPUs, 'auto' takes them where it has. Every way leaves
    at least one CPU to the decode tasks: actors holding every CPU starve them (the pipeline
    waits forever). Raises DistributedError for 'cuda' on a cluster without GPUs and for more
    --ray-actors than GPUs (the extra actors would wait for a GPU forever)."""
    device = auto_device(device)  # $RETRIEVER_DEVICE decides what auto means, when set
    cpus = float(cluster.get("CPU", 1))
    gpus = 0 if device == "cpu" else int(cluster.get("GPU", 0))
    if device.startswith("cuda") and gpus < 1:
        raise DistributedError(
            f"--device {device}: the Ray cluster has no GPUs (ray.cluster_resources() lists none); "
            "start its nodes with GPUs (ray start --num-gpus N), or use --device cpu or auto")
    if gpus >= 1:
        if options.actors > gpus:
            raise DistributedError(
                f"--ray-actors {options.actors}: the Ray cluster has {gpus} GPU{'s' if gpus != 1 else ''} and each "
                f"encoder actor takes one; use --ray-actors {gpus} or fewer (0: one per GPU), or --device cpu")
        actors = options.actors or gpus
        return Resources(actors, 1.0, options.cpus_per_actor or _leave_a_cpu(1.0, actors, cpus), "cuda")
    actors = options.actors or max(1, int(cpus) // CPUS_PER_ACTOR_GROUP)
    per_actor = options.cpus_per_actor or _leave_a_cpu(max(1.0, float(int(cpus // (2 * actors)))), actors, cpus)
    return Resources(actors, 0.0, per_actor, "cpu")


def _leave_a_cpu(per_actor: float, actors: int, cpus: float) -> float:
    """CPUs per actor, fewer than asked where `actors` of them would leave no CPU to decoding."""
    if actors * per_actor > cpus - 1:
        return (cpus - 1) / actors if cpus > 1 else 0.5 / actors
    return per_actor


class RayEngine:
    """An indexer.Engine running on Ray Data. `spec`: the index's ModelSpec (Index.model_spec),
    `model_id`: the index's model id, which every actor's encoder must give."""

    name = "ray"

    def __init__(self, spec: ModelSpec, model_id: str, options: RayOptions | None = None):
        self.spec = spec
        self.model_id = model_id
        self.options = options or RayOptions()
        self.resources: Resources | None = None  # chosen when the pipeline starts
        self.backend: str | None = None  # what encodes, for the run's summary (indexer.RunSummary.backend)
        self.notices: list[str] = []  # for the run's summary: the CPUs taken where a GPU was expected, ...

    def prepare(self, tasks: list[_Task], encoder, draft_min_side: int | None, known_content: frozenset[str],
                options: IndexOptions) -> Iterator[list[_Prepared]]:
        ray = import_ray()
        started_here = _connect(ray, self.options.address)
        try:
            yield from self._stream(ray, tasks, encoder, draft_min_side, known_content, options)
        except ray.exceptions.RayError as exc:
            raise DistributedError(f"the Ray pipeline failed: {_one_line(exc)}") from None
        finally:
            if started_here:
                ray.shutdown()

    def _stream(self, ray, tasks, encoder, draft_min_side, known_content, options) -> Iterator[list[_Prepared]]:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI draws its own, from the run's checkpoints
        cluster = dict(ray.cluster_resources())
        res = plan_resources(cluster, self.options, self.spec.device)
        self.resources = res
        self.backend = f"pytorch ({res.device}) in {res.actors} Ray actor{'s' if res.actors != 1 else ''}"
        if res.device == "cpu" and self.spec.device == "auto" and driver_has_gpu():
            self.notices.append(
                f"the Ray cluster has no GPUs (this machine has one): encoding on CPUs in {res.actors} "
                f"actor{'s' if res.actors != 1 else ''}; start Ray with GPUs (ray start --num-gpus N), "
                "or pass --device cpu to say so")
        spec = replace(self.spec, device=res.device)
        batch = spec.batch_size or default_batch_size(res.device)
        spec = replace(spec, batch_size=batch)
        items = [{"key": i, "task": pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)} for i, t in enumerate(tasks)]
        blocks = max(1, min(len(items), -(-len(items) // self.options.decode_batch)))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(
            _prepare_batch,
            batch_size=self.options.decode_batch,
            batch_format="numpy",
            num_cpus=1,
            # What one decode task holds at its peak (a 12-MP photo decoded, a batch of encoder
            # inputs). Declaring it also keeps Ray from fusing decoding into the encoder actors
            # (it fuses stages with equal resources): decoding must run on every CPU of the
            # cluster, not only in the few encoders. A dead actor is restarted and its batch
            # retried (Ray Data's default for actor pools), which is what the resume relies on.
            memory=DECODE_TASK_MEMORY,
            fn_kwargs={"preprocessor": encoder.preprocessor(), "draft_min_side": draft_min_side,
                       "known_content": known_content, "video_every_s": options.video_every_s},
        )
        ds = ds.map_batches(
            _EncodeActor,
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=res.actors),
            num_gpus=res.gpus_per_actor,
            num_cpus=res.cpus_per_actor,
            fn_constructor_kwargs={"spec": spec, "model_id": self.model_id,
                                   "threads": max(1, round(res.cpus_per_actor))},
        )
        quiet = _quiet_ray_data()
        try:
            batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
            try:
                for out in batches:
                    for note in out.get("note", ()):  # an actor halved its batch for GPU memory
                        if note and note not in self.notices:
                            self.notices.append(str(note))
                    results = []
                    for key, blob in zip(out["key"], out["item"]):
                        prepared: _Prepared = pickle.loads(blob)
                        prepared.task = tasks[int(key)]  # the driver's own task (catalog row ids)
                        results.append(prepared)
                    yield results
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
        finally:
            quiet.restore()


def _prepare_batch(batch: dict[str, np.ndarray], preprocessor, draft_min_side, known_content,
                   video_every_s) -> dict[str, np.ndarray]:
    """A decode task: indexer.prepare on each file, exactly as a local run does it."""
    out = []
    for blob in batch["task"]:
        task = pickle.loads(blob)
        prepared = prepare(task, preprocessor, draft_min_side, known_content, video_every_s=video_every_s)
        prepared.task = None  # the driver has it
        out.append(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
    return {"key": batch["key"], "item": _objects(out)}


class _EncodeActor:
    """One encoder, loaded once per actor from the index's ModelSpec; encodes every decoded file
    of a batch (a video's frames with it) and sends back vectors instead of pixels."""

    def __init__(self, spec: ModelSpec, model_id: str, threads: int):
        import torch

        from retriever.encoders import create_encoder

        if spec.device == "cpu":
            torch.set_num_threads(threads)
        self.encoder = create_encoder(spec)  # on "cuda": the one GPU Ray gave this actor (CUDA_VISIBLE_DEVICES)
        if self.encoder.model_id != model_id:
            raise ModelMismatchError(
                f"the index was built with {model_id}, but a Ray worker loads {self.encoder.model_id}: "
                "install the same weights on every node"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items: list[_Prepared] = [pickle.loads(b) for b in batch["item"]]
        inputs: list[np.ndarray] = []
        spans: list[tuple[_Prepared, int, int]] = []
        for p in items:
            if p.error is not None:
                continue
            if p.pixels is not None:
                spans.append((p, len(inputs), 1))
                inputs.append(p.pixels)
            elif p.frames is not None:
                spans.append((p, len(inputs), len(p.frames)))
                inputs.extend(pixels for _, pixels in p.frames)
        vectors = self.encoder.embed_preprocessed(inputs) if inputs else None
        for p, start, count in spans:
            p.vectors = vectors[start:start + count].copy()
            p.pixels = None
            if p.frames is not None:
                p.frames = [(ms, None) for ms, _ in p.frames]
        note = self.encoder.batch_note or ""  # out of GPU memory: the smaller batch, said to the driver
        return {"key": batch["key"], "item": _objects([pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL)
                                                       for p in items]),
                "note": _objects([note] * len(items))}


def _driver_encoder(index, batch_size: int | None):
    return index.indexing_encoder("cpu", batch_size)[0]


def driver_has_gpu() -> bool:
    """Whether this machine (the driver) has a CUDA GPU torch can use."""
    if surely_cpu("auto"):
        return False
    import torch

    return torch.cuda.is_available()


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _connect(ray, address: str | None) -> bool:
    """Join `address`, or start a Ray instance on this machine when None. -> whether it was started
    here (and is to be shut down at the end). An already initialised Ray (a notebook, a test) is used."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # local-first: nothing is reported home
    # ray.init makes SIGTERM exit at once; the CLI's handler stops at a checkpoint instead.
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise DistributedError(f"cannot connect to {where}: {_one_line(exc)}") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


class _quiet_ray_data:
    """Ray Data logs each dataset's plan and statistics at INFO on the console, and a failure's
    whole stack at ERROR: the CLI reports progress itself, and a failure as DistributedError."""

    def __init__(self):
        self.logger = logging.getLogger("ray.data")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def restore(self) -> None:
        self.logger.setLevel(self.level)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray's task errors carry the remote traceback; its last line is the cause.
    line = next((t for t in reversed(text) if t.strip()), type(exc).__name__) if text else type(exc).__name__
    line = line.strip()
    if line.startswith("retriever.") and ": " in line:  # our own error, raised on a worker: its message
        line = line.split(": ", 1)[1]
    return line[:300]


def run_index_ray(
    index,
    encoder,
    roots: Sequence[str],
    options: IndexOptions | None = None,
    ray_options: RayOptions | None = None,
    on_progress=None,
    device: str = "auto",
    batch_size: int | None = None,
) -> RunSummary:
    """indexer.run_index with decoding and encoding on Ray. `encoder`: the driver's encoder (or a
    loader, replaced by one on the CPU): its preprocessor is shipped to the decode tasks. device,
    batch_size: the actors' (auto: CUDA where the cluster has GPUs). Raises MissingDependencyError
    without Ray, DistributedError when the cluster fails or cannot give what was asked (--device
    cuda without GPUs, more --ray-actors than GPUs)."""
    import_ray()
    engine = RayEngine(index.model_spec(device, batch_size), index.model_id, ray_options)
    # The driver only preprocesses (and rarely encodes a file whose content vanished while
    # planned): its copy of the model goes on the CPU, not on a GPU an actor needs.
    if not hasattr(encoder, "embed_preprocessed"):  # not loaded yet: loaded on the CPU
        if not surely_cpu(device):  # (where auto can only mean the CPU, the caller's loader says so)
            encoder = functools.partial(_driver_encoder, index, batch_size)
        return run_index(index, encoder, roots, options, on_progress=on_progress, engine=engine)
    on = str(getattr(encoder, "device", "cpu"))
    if not on.startswith("cuda"):
        return run_index(index, encoder, roots, options, on_progress=on_progress, engine=engine)
    from retriever.encoders.cuda import release_cached_memory

    encoder.move_to("cpu")  # loaded on this machine's GPU (a new index): off it for the run, back after
    release_cached_memory()
    try:
        return run_index(index, encoder, roots, options, on_progress=on_progress, engine=engine)
    finally:
        encoder.move_to(on)


__all__ = ["RayEngine", "RayOptions", "DistributedError", "plan_resources", "run_index_ray"]
