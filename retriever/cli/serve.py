"""`retriever serve`: the HTTP API and the web page (retriever.serve), model and index kept warm."""

from __future__ import annotations

import click

from retriever.cli.options import device_option, home_dir, index_options, reports_errors
from retriever.errors import MissingDependencyError, RetrieverError


@click.command()
@index_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--token", envvar="RETRIEVER_TOKEN", show_envvar=True, metavar="TOKEN",
              help="Every request must carry TOKEN (header X-Retriever-Token, Authorization: Bearer, or "
                   "?token= once in the page's address).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token: anyone who can "
                                                "reach the port sees every photo.")
@click.option("--vlm", "vlm_spec", metavar="MODEL",
              help="Vision-language model for /api/ask and the page's ask box (a folder or a Hugging Face id); "
                   "without it, ask is off.")
@device_option
@reports_errors
def serve(home, index_name, host, port, token, insecure, vlm_spec, device):
    """Search the index from a browser or over HTTP: the page at http://HOST:PORT/, the JSON API
    under /api (schema at /openapi.json).

    The model and the index are loaded once; new checkpoints of an indexing run are picked up
    without a restart. While it runs, `retriever search` and `similar` on the same index use it.
    Needs pip install 'retriever[serve]'.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingDependencyError("retriever serve needs: pip install 'retriever[serve]'") from None
    from retriever.index import Index
    from retriever.serve.service import Service
    from retriever.serve.server import Server, is_loopback

    if token is not None and not token.strip():
        raise RetrieverError("--token is empty")
    if not is_loopback(host) and token is None:
        if not insecure:
            raise RetrieverError(f"--host {host} makes every photo readable from the network: "
                                 "give --token TOKEN (or --insecure to serve without one)")
        click.echo("WARNING: serving WITHOUT A TOKEN on a non-loopback address: anyone who can reach "
                   f"{host}:{port} can read every photo in the index", err=True)
    from retriever.serve.client import find_server

    idx = Index.open(home_dir(home), index_name)
    running = find_server(idx.folder)
    if running is not None:
        idx.close()
        raise RetrieverError(f"a server for index {idx.name!r} already runs at {running.url} (pid {running.pid})")
    vlm = None
    if vlm_spec:
        from retriever.cli.vlm import load_vlm_for_command

        vlm = load_vlm_for_command(vlm_spec, device, lambda m: click.echo(m, err=True))
    click.echo(f"loading {idx.model_id} and the index ...", err=True)
    service = Service(idx, device=device, vlm=vlm)
    service.warm()

    def started(info):
        shown = f"{info.url}/" + ("?token=TOKEN" if token else "")
        click.echo(f"serving index {idx.name!r} ({service.status()['images']} images) at {shown}  "
                   f"(Ctrl-C stops)", err=True)

    with idx:
        Server(service, host=host, port=port, token=token, on_started=started).run()


COMMANDS = [serve]
