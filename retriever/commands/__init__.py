"""Commands that live in their own modules: each module here defines click commands with the
option bundles of `retriever.cli` and lists them in `COMMANDS`. `register` adds them all to the
`retriever` group. Modules import only click and `retriever.cli` at the top (anything heavy goes
inside the command), so `retriever --help` stays fast."""

from __future__ import annotations

import importlib
import pkgutil


def register(group) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            group.add_command(command)
