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
              help="Every request must carry TOKEN (header X-Retriever-Token or Authorization: Bearer; a "
                   "browser opens /?token=TOKEN once). On the command line it is visible to other users "
                   "(ps): prefer $RETRIEVER_TOKEN or --token-file. Without any, a non-loopback --host gets "
                   "a new random token, printed once in the login address.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="Read the token from the first line of FILE (keep it 0600).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token: anyone who can "
                                                "reach the port sees every photo.")
@click.option("--vlm", "vlm_spec", metavar="MODEL",
              help="Vision-language model for /api/ask and the page's ask box (a folder or a Hugging Face id); "
                   "without it, ask is off.")
@click.option("--no-vlm-adapter", is_flag=True,
              help="Run --vlm as it is, without the index's fine-tuned adapter (retriever finetune-vlm).")
@device_option
@reports_errors
def serve(home, index_name, host, port, token, token_file, insecure, vlm_spec, no_vlm_adapter, device):
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
    from retriever.serve.server import Server

    source = click.get_current_context().get_parameter_source("token")
    token, generated, warnings = choose_token(token, token_file, host, insecure,
                                              on_command_line=source == click.core.ParameterSource.COMMANDLINE)
    for warning in warnings:
        click.echo(f"WARNING: {warning}", err=True)
    from retriever.serve.client import find_server

    idx = Index.open(home_dir(home), index_name)
    running = find_server(idx.folder)
    if running is not None:
        idx.close()
        raise RetrieverError(f"a server for index {idx.name!r} already runs at {running.url} (pid {running.pid})")
    vlm = None
    if vlm_spec:
        from retriever.cli.vlm import load_vlm_for_command

        vlm = load_vlm_for_command(vlm_spec, device, lambda m: click.echo(m, err=True),
                                   adapter_from=None if no_vlm_adapter else idx.folder)
    click.echo(f"loading {idx.model_id} and the index ...", err=True)
    service = Service(idx, device=device, vlm=vlm)
    service.warm()

    def started(info):
        # a generated token is shown once, in the login address (as Jupyter does); a given one is not
        shown = f"{info.url}/" + (f"?token={token}" if generated else "?token=TOKEN" if token else "")
        click.echo(f"serving index {idx.name!r} ({service.status()['images']} images) at {shown}  "
                   f"(Ctrl-C stops)", err=True)

    with idx:
        Server(service, host=host, port=port, token=token, on_started=started).run()


def choose_token(token: str | None, token_file: str | None, host: str, insecure: bool,
                 on_command_line: bool = False) -> tuple[str | None, bool, list[str]]:
    """-> (the token, whether it was generated here, warnings to show)."""
    import os
    import secrets
    from pathlib import Path

    from retriever.serve.server import is_loopback

    warnings = []
    if token is not None and token_file is not None:
        raise RetrieverError("give --token or --token-file, not both")
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrieverError(f"cannot read --token-file {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise RetrieverError(f"--token-file {token_file} is empty")
        if os.stat(path).st_mode & 0o077:
            warnings.append(f"--token-file {token_file} is readable by other users: chmod 600 it")
    elif token is not None:
        if not token.strip():
            raise RetrieverError("--token is empty")
        if on_command_line:
            warnings.append("--token on the command line is visible to other users (ps): "
                            "prefer $RETRIEVER_TOKEN or --token-file")
    generated = False
    if token is None and not is_loopback(host):
        if insecure:
            warnings.append(f"serving WITHOUT A TOKEN on {host}: anyone who can reach it can read every photo "
                            "in the index")
        else:
            token, generated = secrets.token_urlsafe(24), True
    return token, generated, warnings


COMMANDS = [serve]
