"""`retriever search` and `retriever similar`: answered here, by a running `retriever serve`, or,
when this runs inside the warm daemon, with the daemon's collection (its click context object)."""

from __future__ import annotations

import os
import sys

import click

from retriever.cli.options import (
    adapter_option,
    home_dir,
    FILTER_NAMES,
    daemon_options,
    device_option,
    filter_options,
    index_options,
    output_options,
    pop_filters,
    reports_errors,
    view_options,
)
from retriever.cli.output import ProgressReporter, print_hits, query_encoder_text, shown
from retriever.errors import RetrieverError


def _ask_server(home, index_name, top, keywords, verbose, kind, words, filter_values):
    """Hits from a `retriever serve` running for this index, or None to search here: no server,
    one that does not answer, or a query it cannot take (image terms in search). A server's
    refusal of the query itself (a bad date...) is the same error a local search gives."""
    from retriever.serve.client import ServerError, ServerUnsupported, find_server, hits_from_dicts, index_folder, server_query

    info = find_server(index_folder(home, index_name))
    if info is None:
        return None
    try:
        hits = hits_from_dicts(server_query(info, words, top, filter_values, kind=kind, keywords=keywords))
    except ServerUnsupported as exc:
        if verbose:
            click.echo(f"server not used: {exc}; searching here", err=True)
        return None
    except ServerError as exc:
        if exc.status is not None and exc.status not in (401, 500, 501):
            raise
        if exc.status == 401 or verbose:
            click.echo(f"the server at {info.url} did not answer ({exc}); searching here", err=True)
        return None
    if verbose:
        click.echo(f"answered by the server at {info.url} (pid {info.pid})", err=True)
    return hits


def _rerank(hits, terms, rerank_with, device, top, index_folder):
    from retriever.cli.vlm import adapter_folder_of, load_vlm_for_command
    from retriever.query import keyword_text_of
    from retriever.vlm.rerank import rerank

    vlm_spec, rerank_top, use_adapter = rerank_with
    vlm = load_vlm_for_command(vlm_spec, device, lambda m: click.echo(m, err=True),
                               adapter_from=index_folder if use_adapter else None)
    progress = ProgressReporter(verb="reranking", past="reranked", unit="photo")
    try:
        reranked = rerank(vlm, keyword_text_of(terms), hits, top_n=rerank_top, on_progress=progress.callback)
    finally:
        progress.close()
    if vlm.batch_note:  # the GPU ran out of memory and the batches were made smaller
        click.echo(f"note: {vlm.batch_note}", err=True)
    from dataclasses import replace

    adapter = adapter_folder_of(vlm)  # each hit's JSON says whether the model ran with a fine-tuned adapter
    return [replace(hit, rank=i, meta={**hit.meta, "vlm_adapter": adapter})
            for i, hit in enumerate((r.as_hit() for r in reranked[:top]), start=1)]



def _open_collection(home, index_name, device, daemon_idle=None):
    """A context manager giving the Collection to search: the warm daemon's when this command runs
    inside one (its click context object; it stays open), else one opened here for one query."""
    import contextlib

    from retriever.api import open as open_collection

    warm = click.get_current_context().find_root().obj
    if warm is not None:
        from retriever.index import check_name

        return contextlib.nullcontext(warm(home_dir(home) / check_name(index_name), device, daemon_idle))
    # one query, then exit: the catalog read without SQLAlchemy, ONNX sessions that start fast
    return open_collection(home_dir(home), index_name, device=device, one_query=True)


def _start_daemon(home, index_name, idle) -> None:
    """After a local search: a warm daemon for the next one (unless one runs, or this is one)."""
    from retriever.daemon.client import start_daemon
    from retriever.locations import index_folder

    start_daemon(index_folder(home, index_name), idle)



QUERY_SYNTAX = """
    \b
    Combine terms with + and - (separate words), weight them with N*TERM:
      retriever search beach + ~/ref.jpg - people
      retriever search "red car" - 0.5*night
    A term naming an existing image file is an image (its look); force one
    with text:WORD or image:PATH; concept:NAME is a concept learned from
    example photos. The query is the normalised weighted sum. A concept
    alone (concept:rex) also re-scores its best 200 photos by their
    nearest neighbours among them.
"""


@click.command()
@click.argument("query", nargs=-1)
@index_options
@output_options
@filter_options
@device_option
@click.option("--keywords/--no-keywords", default=True, show_default=True,
              help="Also match the query's words in file names and captions (SQLite FTS5), fused with the "
                   "embedding ranking; with no match the order is the embedding's.")
@click.option("--rerank", is_flag=True,
              help="Let a vision-language model rescore the best --rerank-top results: log P(yes) - log P(no) "
                   "for 'Does this photo show: QUERY?'. Needs pip install 'retriever[vlm]'.")
@click.option("--rerank-top", type=click.IntRange(1, 500), default=20, show_default=True, metavar="N",
              help="How many results --rerank rescores.")
@click.option("--vlm", "vlm_spec", metavar="MODEL",
              help="Vision-language model for --rerank: a local folder or a Hugging Face id.  "
                   "[default: HuggingFaceTB/SmolVLM-256M-Instruct on CPU, HuggingFaceTB/SmolVLM-Instruct on CUDA]")
@click.option("--no-vlm-adapter", "no_vlm_adapter", is_flag=True,
              help="--rerank with the vision-language model as published, without the adapter `retriever "
                   "finetune-vlm` trained for it in this index.")
@adapter_option
@view_options
@daemon_options
@reports_errors
def search(query, home, index_name, top, as_json, paths_only, null_sep, device, verbose, keywords, rerank,
           rerank_top, vlm_spec, no_vlm_adapter, **kwargs):
    """Photos that match QUERY, best first: text, images, or both, combined.

    \b
      retriever search "a dog on the beach"
      retriever search receipt -k 50 --paths
      retriever search sunset --after 2023-06 --before 2023-09 --camera pixel
      retriever search beach + ~/ref.jpg - people --json | jq .path
      retriever search --text 0471          (photos whose text contains 0471)
      retriever search concept:rex + beach  (a concept learned from examples)
    """
    from retriever.query import keyword_text_of, parse

    filter_values = {name: kwargs[name] for name in FILTER_NAMES}
    filters = pop_filters(kwargs)
    if not query and not filters.texts and not filters.concepts:
        raise click.UsageError("give a QUERY, --text TEXT to find photos by the text in them, or --concept NAME")
    terms = parse(query, default="auto") if query else []
    if rerank:
        if not keyword_text_of(terms):
            raise RetrieverError("--rerank needs text in the query: the model is asked whether each photo shows it")
        from retriever.vlm.model import check_weights

        check_weights(vlm_spec, device)  # no weights: fail within seconds, before loading anything
    rerank_with = (vlm_spec, rerank_top, not no_vlm_adapter) if rerank else None
    _run_query(terms, filters, home, index_name, top, as_json, paths_only, null_sep, device, verbose,
               keywords=keywords, rerank_with=rerank_with, remote=("search", query, filter_values), **kwargs)


search.help += QUERY_SYNTAX


@click.command()
@click.argument("images", nargs=-1, required=True)
@index_options
@output_options
@filter_options
@device_option
@adapter_option
@view_options
@daemon_options
@reports_errors
def similar(images, home, index_name, top, as_json, paths_only, null_sep, device, verbose, **kwargs):
    """Photos that look like IMAGES (files inside or outside the collection).

    Several images are averaged; images of the collection are left out of
    the results. Terms combine as in search (here a bare word is an image).
    IMAGE@x0,y0,x1,y1 is a part of the image (its pixels as shown): photos
    with something like that part.

    \b
      retriever similar a.jpg b.jpg
      retriever similar beach.jpg - text:people --in ~/Pictures/2024
      retriever similar IMG_2041.jpg@820,470,1060,650
    """
    from retriever.query import parse

    filter_values = {name: kwargs[name] for name in FILTER_NAMES}
    filters = pop_filters(kwargs)
    terms = parse(images, default="image")
    _run_query(terms, filters, home, index_name, top, as_json, paths_only, null_sep, device, verbose,
               remote=("similar", images, filter_values), **kwargs)


def _run_query(terms, filters, home, index_name, top, as_json, paths_only, null_sep, device, verbose,
               preview, preview_protocol, html_file, keywords=False, rerank_with=None, remote=None,
               daemon=None, daemon_idle=None, no_adapter=False) -> None:
    from retriever.query import describe

    if verbose:
        click.echo(f"query: {shown(describe(terms)) if terms else '(none: photos by their text, best match first)'}",
                   err=True)
        for condition in filters.describe():
            click.echo(f"filter: {shown(condition)}", err=True)
    in_daemon = click.get_current_context().find_root().obj is not None
    if in_daemon and (rerank_with or preview or preview_protocol or html_file):
        from retriever.daemon.client import RunLocally

        raise RunLocally("--rerank, --preview and --html run in the client's process")
    asked_server = not (rerank_with or remote is None or in_daemon or no_adapter)  # a server always adapts
    hits = _ask_server(home, index_name, top, keywords, verbose, *remote) if asked_server else None
    empty_index = False
    searched_here = hits is None and not in_daemon
    if hits is None:
        with _open_collection(home, index_name, device, daemon_idle) as collection:
            fetch = max(top, rerank_with[1]) if rerank_with else top
            hits = collection.query(terms, fetch, filters, keywords=keywords, adapter=not no_adapter)
            if rerank_with:
                hits = _rerank(hits, terms, rerank_with, device, top, collection.folder)
            if verbose and collection.last_strategy:
                click.echo(f"filtered search: {collection.last_strategy}", err=True)
            backend = collection.query_backend()
            if verbose and backend is not None and terms:
                click.echo(f"query encoder: {query_encoder_text(backend)}", err=True)
            if verbose and in_daemon:
                click.echo(f"answered by the warm daemon (pid {os.getpid()})", err=True)
            empty_index = not hits and collection.is_empty()
    if html_file:
        from retriever.render import html_page, write_html

        title = f"retriever: {describe(terms)}"
        conditions = "; ".join(filters.describe())
        write_html(html_file, html_page(
            hits, title=title,
            query_description=f"{describe(terms)}" + (f" ({conditions})" if conditions else "")
            + f", index {index_name!r}: {len(hits)} results",
        ))
        click.echo(f"wrote {shown(str(html_file))} ({len(hits)} results)", err=True)
    protocol = None
    if (preview or preview_protocol) and not (as_json or paths_only or null_sep):
        from retriever.render import choose_protocol, probe_sixel

        protocol = choose_protocol(preview_protocol or "auto", os.environ, sys.stdout.isatty(), probe=probe_sixel)
    if protocol is not None:
        from retriever.render import multiplexer, preview_lines

        tmux = multiplexer(os.environ) == "tmux"
        for hit in hits:
            click.echo(preview_lines(hit, protocol, tmux=tmux))
    else:
        print_hits(hits, as_json, paths_only, null_sep)
    from retriever.cli.concepts import remember_results

    remember_results(home, index_name, terms, hits)
    if not hits and not as_json and not paths_only:
        if empty_index:
            click.echo("no results: the index is empty", err=True)
        elif filters.describe():
            click.echo("no results: nothing passes " + "; ".join(filters.describe()), err=True)
        else:
            click.echo("no results", err=True)
    if searched_here and not rerank_with:
        from retriever.daemon.client import daemon_disabled

        if daemon or (daemon is None and not daemon_disabled()):
            _start_daemon(home, index_name, daemon_idle)



COMMANDS = [search, similar]
