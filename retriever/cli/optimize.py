"""`retriever optimize`: rebuild the FAISS index from the stored vectors, of the kind that suits
the collection (or the one asked for), with its recall measured against exact search."""

from __future__ import annotations

import json
import time

import click

from retriever.cli.options import cache_option, home_dir, index_options, reports_errors

KIND_CHOICES = ["auto", "flat", "ivf-sq8", "ivf-pq"]  # = "auto" + retriever.vectors.KINDS


@click.command()
@index_options
@click.option("--kind", type=click.Choice(KIND_CHOICES), default=None,
              help="auto: exact (flat) up to --exact-max vectors, ivf-sq8 above (exact again if IVF "
                   "cannot reach the target recall). Another kind is kept for good, through later "
                   "indexing runs, until `optimize --kind auto`. With --on-disk: ivf-sq8 (auto) or "
                   "ivf-pq. Without --on-disk, a kind brings an on-disk index back into memory.  "
                   "[default: auto; on an on-disk index, its own kind]")
@click.option("--on-disk/--in-memory", "on_disk", default=None,
              help="--on-disk: an IVF index whose inverted lists live in a file, memory-mapped by "
                   "searches (for collections beyond memory); built from parallel shards. It stays on "
                   "disk: indexing runs add to a small in-memory delta, and a plain `optimize` folds "
                   "the delta in. --in-memory goes back.  [default: as the index is now]")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="--on-disk: shards filled in parallel.  [default: one per core]")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="--on-disk: vectors a shard holds in memory before it is written.  [default: 250,000]")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="R",
              help="recall@10 against exact search that an IVF index must reach; nprobe is the smallest "
                   "that does, measured on held-out queries. Recorded for later rebuilds.  [default: 0.95]")
@click.option("--exact-max", type=click.IntRange(min=0), default=None, metavar="N",
              help="auto: the most vectors an exact index holds. Recorded for later runs.  "
                   "[default: 10,000,000 / dim: 19,531 at dim 512, 14,204 at 704]")
@click.option("--onnx/--no-onnx", "onnx", default=True, show_default=True,
              help="Also take the model's ONNX export (checked against PyTorch to 1e-4) from the model cache, "
                   "exporting it there when it is missing or damaged, so that searches run without torch.")
@click.option("--regions", is_flag=True,
              help="Also encode region vectors for the photos that have none (boxes on a grid over each photo; "
                   "the photo vectors stay), so that searches find small things and say where. "
                   "Incremental and resumable: Ctrl-C keeps what is done.")
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print what was built as one JSON object.")
@reports_errors
def optimize(home, index_name, kind, target_recall, exact_max, on_disk, workers, shard_size, onnx, regions, cache_dir,
             as_json):
    """Rebuild the vector index from the stored vectors (no re-encoding, no model loaded).

    Up to a size threshold search is exact; above it an IVF index with 8-bit codes is trained
    on a sample of the collection and its nprobe chosen to hold recall@10 >= 0.95 against
    exact search. Indexing runs switch kinds by themselves as a collection grows; run this
    after changing a setting, or to force a kind. It also folds the delta log (what indexing
    runs appended since the file was written; see `retriever status`) into the new file.

    \b
      retriever optimize                       the kind that suits the size
      retriever optimize --kind ivf-sq8 --target-recall 0.98
      retriever optimize --kind flat           exact search, whatever the size
      retriever optimize --on-disk             IVF lists on disk, memory-mapped (beyond memory)
      retriever optimize --in-memory           back into memory
      retriever optimize --regions             add region vectors (search by parts of photos)
    """
    from retriever.index import Index

    with Index.open(home_dir(home), index_name) as idx:
        idx.acquire_lock()
        report, size = idx.optimize(kind, target_recall=target_recall, exact_max=exact_max, on_disk=on_disk,
                                    workers=workers, shard_size=shard_size, progress=_Progress())
        count = report.count
        onnx_result = _export_onnx(idx, cache_dir) if onnx else None
    region_result = _add_regions(home, index_name) if regions else None
    result = {
        "index": index_name,
        "index_type": report.index_type,
        "factory": report.factory,
        "params": {k: v for k, v in report.params.items() if k != "factory"},
        "vectors": count,
        "recall_at_10": report.recall_at_10,
        "target_recall": report.target_recall,
        "reached": report.reached,
        "build_seconds": round(report.build_s, 3),
        "train_seconds": round(report.train_s, 3),
        "add_seconds": round(report.add_s, 3),
        "tune_seconds": round(report.tune_s, 3),
        "bytes": size,
        "bytes_per_vector": round(size / count, 1) if count else None,
        "onnx": onnx_result,
        **({"regions": region_result} if region_result is not None else {}),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(_describe(result), err=True)
        if onnx_result is not None:
            click.echo(_describe_onnx(onnx_result), err=True)
        if region_result is not None:
            click.echo(f"regions: {region_result['photos']} photos encoded, {region_result['regions']} regions "
                       f"({region_result['regions_per_photo'] or 0} a photo) in {region_result['seconds']:.1f}s"
                       + (f"; {region_result['failed']} failed" if region_result["failed"] else ""), err=True)
    if region_result is not None and region_result["interrupted"]:
        from retriever.cli.options import EXIT_INTERRUPTED

        click.echo("interrupted: the regions encoded so far are saved; run the same command again to resume", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    if not report.reached:
        click.echo(f"warning: recall@10 {report.recall_at_10} is under the target {report.target_recall} even "
                   f"scanning every list; `retriever optimize --kind flat` gives exact search", err=True)


def _add_regions(home, index_name) -> dict:
    """`--regions`: region vectors for the photos without them, with a progress line."""
    from retriever.api import open as open_collection
    from retriever.cli.output import ProgressReporter

    from retriever.cli.options import stop_on_sigterm

    stop_on_sigterm()
    with open_collection(home_dir(home), index_name, writable=True,
                         on_message=lambda msg: click.echo(msg, err=True)) as collection:
        reporter = ProgressReporter(enabled=True, verb="encoding regions of", past="encoded regions of", unit="photo")
        try:
            return collection.add_regions(progress=reporter.callback).as_dict()
        finally:
            reporter.close()


def _export_onnx(idx, cache_dir=None) -> dict:
    """The index's model exported to ONNX and checked; {"ok": False, "reason": ...} when refused or
    when onnx/onnxruntime are not installed (searches then stay on PyTorch)."""
    from retriever.errors import MissingDependencyError

    try:
        report = idx.export_onnx(cache_dir=cache_dir)
    except MissingDependencyError as exc:
        return {"ok": False, "reason": str(exc)}
    return {"ok": report.ok, "reason": report.reason, "opset": report.opset,
            "max_abs_diff": {name: t.max_abs_diff for name, t in report.towers.items()}}


def _describe_onnx(r: dict) -> str:
    if not r["ok"]:
        return f"ONNX export refused: {r['reason']}; queries use PyTorch"
    diffs = " / ".join(f"{name} {d:.1e}" for name, d in r["max_abs_diff"].items() if d is not None)
    return f"ONNX: text.onnx, image.onnx checked against PyTorch (max |diff| {diffs}, opset {r['opset']})"


class _Progress:
    """An on-disk build's stages on stderr: a line per stage, and the fill every 10 %."""

    def __init__(self):
        self.started = time.monotonic()
        self.last: tuple[str, int] | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        step = (stage, 10 * done // total if total else 0)
        if step == self.last:
            return
        self.last = step
        what = {"sample": "sampling and training", "fill": f"filling shards: {done:,}/{total:,} vectors",
                "merge": f"merging {total} shards into the on-disk lists", "tune": "tuning nprobe"}.get(stage, stage)
        if stage in ("merge", "tune", "sample") and done:
            return
        click.echo(f"[{time.monotonic() - self.started:6.1f}s] {what}", err=True)


def _describe(r: dict) -> str:
    params = r["params"]
    if r["index_type"] == "flat":
        what = "flat (exact search)"
        if "fallback_from" in params:
            what += f": {params['fallback_from']} reached only recall@10 {params['fallback_recall']}"
    else:
        what = (f"{r['index_type']} ({r['factory']}, nprobe {params['nprobe']}): recall@10 {r['recall_at_10']} "
                f"against exact (target {r['target_recall']})")
    if r["index_type"].endswith("-ondisk"):
        what = what.replace(r["index_type"], r["index_type"][: -len("-ondisk")] + " on disk", 1)
        what += f", {params.get('shards')} shards merged"
    size_mb = r["bytes"] / 1e6
    return (f"index {r['index']!r}: {what}; {r['vectors']:,} vectors, built in {r['build_seconds']:.1f}s, "
            f"{size_mb:.1f} MB on disk ({r['bytes_per_vector']} B/vector)")


COMMANDS = [optimize]
