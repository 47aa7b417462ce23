"""`retriever status`, `retriever errors`, `retriever models`: what an index holds."""

from __future__ import annotations

import json
from typing import Any

import click

from retriever.cli.options import home_dir, index_options, reports_errors
from retriever.cli.output import shown


@click.command()
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@reports_errors
def status(home, index_name, as_json):
    """Where the index lives, its model, and its counts (images, vectors, failed, last run)."""
    from retriever.api import open as open_collection
    from retriever.daemon.client import is_running

    with open_collection(home_dir(home), index_name) as collection:
        info = collection.status()
        info["daemon"] = is_running(collection.folder)  # a warm query daemon listens for this index
    if info["readable_by_others"]:
        click.echo(f"warning: other users can read this index ({len(info['readable_by_others'])} of its files and "
                   f"folders, e.g. {info['readable_by_others'][0]}): chmod -R go-rwx {collection.folder}", err=True)
    if as_json:
        click.echo(json.dumps(info))
        return
    last = info["last_run"]
    last_text = "never"
    if last:
        summary = last.get("summary") or {}
        last_text = (
            f"{last.get('finished_at') or last['started_at']} ({last['status']}: "
            f"{summary.get('indexed', 0)} indexed, {summary.get('failed', 0)} failed)"
        )
    rows = [
        ("home", info["home"]),
        ("index", info["index"]),
        ("model", " ".join(x for x in (info["model"], info["pretrained"] or "") if x)),
        ("model id", info["model_id"]),
        ("dim", info["dim"]),
        ("precision", _precision_text(info)),
        ("images", info["images"]),
        ("vectors", info["vectors"]),
        ("search", _index_kind_text(info) + _log_text(info)),
        ("text", (f"{info['text']['read']} photos read, {info['text']['with_text']} with text"
                  if info.get("text", {}).get("read") else "not read (retriever ocr)")),
        ("tags", (f"{info['tags']['labels']} labels, {info['tags']['tagged']} images tagged, "
                  f"{info['tags']['untagged']} not yet (retriever tag)") if info.get("tags") else "none (retriever tag)"),
        ("regions", (f"{info['regions']['regions']:,} regions of {info['regions']['photos']:,} photos "
                     f"({info['regions']['per_photo']} a photo, {info['regions']['bytes'] / 1e6:.1f} MB)"
                     if info.get("regions") else "none (retriever optimize --regions)")),
        ("concepts", (", ".join(info["concepts"]) if info.get("concepts") else "none (retriever concept add)")),
        ("onnx", _onnx_text(info.get("onnx"))),
        ("daemon", "running (retriever daemon status)" if info["daemon"] else "not running"),
        ("failed", f"{info['failed']}" + (" (retriever errors)" if info["failed"] else "")),
        ("created", info["created_at"]),
        ("last run", last_text),
    ]
    for key, value in rows:
        click.echo(f"{key:<10} {value}")


def _onnx_text(onnx: dict[str, Any] | None) -> str:
    if not onnx:
        return "none: queries use PyTorch (retriever optimize exports)"
    if onnx.get("pending"):
        if onnx.get("usable"):
            return "made in the background after the first run and ready (recorded by the next `retriever index`)"
        return f"{onnx.get('reason')}; queries use PyTorch until it is done"
    if not onnx.get("ok"):
        return f"refused: {onnx.get('reason')}; queries use PyTorch"
    diffs = ", ".join(f"{name} {d:.1e}" for name, d in (onnx.get("max_abs_diff") or {}).items() if d is not None)
    usable = "" if onnx.get("usable") else " (files missing or another model: not used)"
    text = f"text and image towers, max |diff| against PyTorch {diffs} (opset {onnx.get('opset')}){usable}"
    measured = onnx.get("indexing")
    if measured:
        text += (f"; indexing on the CPU: {'ONNX Runtime' if measured['backend'] == 'onnx' else 'PyTorch'} "
                 f"({measured['onnx_images_per_s']} against PyTorch's {measured['pytorch_images_per_s']} images/s "
                 f"at export)")
    return text


def _index_kind_text(info: dict[str, Any]) -> str:
    kind = info.get("index_type") or "flat"
    if kind == "flat":
        return "exact (flat)"
    params = info.get("index_params") or {}
    shown = kind + (" (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    recall = info.get("index_recall_at_10")
    if recall is not None:
        shown += f", recall@10 {recall:.3f} against exact search"
    return shown


def _log_text(info: dict[str, Any]) -> str:
    """The FAISS file's delta log: what the last checkpoints added since the file was written."""
    log = info.get("vector_log")
    if not log or not log["records"]:
        return ""
    return (f"; +{log['added']:,} vectors, {log['removed']:,} removed or replaced in the delta log "
            f"({log['records']} checkpoints, {log['bytes'] / 1e6:.1f} MB; folded in by retriever optimize)")


@click.command()
@index_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per failed file.")
@reports_errors
def errors(home, index_name, as_json):
    """Files that could not be indexed, with the reason. They are retried when they change."""
    from retriever.api import open as open_collection

    with open_collection(home_dir(home), index_name) as collection:
        failures = collection.failures()
    for f in failures:
        if as_json:
            click.echo(shown(json.dumps({"path": f["path"], "error": f["error"], "at": f["indexed_at"]},
                                         ensure_ascii=False)))
        else:
            click.echo(f"{shown(f['path'])}: {f['error']}")
    if not failures and not as_json:
        click.echo("no failed files", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
@reports_errors
def models(as_json):
    """Encoders available: the offline one, and every open_clip architecture with its pretrained tags."""
    from retriever.encoders import list_available_models

    for row in list_available_models():
        if as_json:
            click.echo(json.dumps(row))
        else:
            tags = ", ".join(row["pretrained"]) if row["pretrained"] else ""
            click.echo(f"{row['name']:<40} {tags or row['note']}")



COMMANDS = [status, errors, models]


def _precision_text(info: dict) -> str:
    int8 = (info.get("onnx") or {}).get("int8")
    if info.get("precision") != "int8" or not int8:
        return info.get("precision") or "fp32"
    return (f"int8 image tower ({int8['speedup']}x fp32's speed when quantized, cosine to fp32 "
            f"{int8['mean_cosine']} mean, {int8['min_cosine']} least)")
