"""`retriever finetune-vlm`: train, list and remove the LoRA adapters of a vision-language model
that an index holds (retriever/vlm/finetune.py, retriever/vlm/adapters.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from retriever.cli.options import device_option, home_dir, index_options, reports_errors
from retriever.cli.output import duration, shown
from retriever.cli.vlm import load_vlm_for_command, vlm_option
from retriever.errors import RetrieverError


class StepReporter:
    """Training progress on stderr: a bar with the loss on a terminal, else a line every few
    seconds and at the last step."""

    LOG_EVERY_S = 5.0

    def __init__(self, enabled: bool = True):
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.bar = None
        self.last_log = time.monotonic()

    def update(self, s) -> None:
        if not self.enabled:
            return
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=s.steps, unit="step", desc="fine-tuning", file=sys.stderr, dynamic_ncols=True)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{s.loss:.4f}")
            return
        now = time.monotonic()
        if now - self.last_log >= self.LOG_EVERY_S or s.step == s.steps:
            self.last_log = now
            click.echo(f"step {s.step}/{s.steps}, loss {s.loss:.4f}, learning rate {s.learning_rate:.2e}, "
                       f"{duration(s.elapsed)}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("finetune-vlm")
@click.argument("training_file", required=False, metavar="[PAIRS]")
@click.option("--index-captions", is_flag=True,
              help="Also train on the captions stored in the index (`retriever caption` writes them); a photo "
                   "that cannot be read any more is skipped and reported.")
@index_options
@vlm_option
@device_option
@click.option("--epochs", type=click.IntRange(1, 1000), default=3, show_default=True, metavar="N",
              help="Passes over the training pairs.")
@click.option("--max-steps", type=click.IntRange(min=1), metavar="N",
              help="Train exactly N optimizer steps instead, going through the pairs as often as that takes.")
@click.option("--learning-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=2e-4,
              show_default=True, metavar="LR", help="AdamW's learning rate at the first step; it decays linearly to 0.")
@click.option("--lora-rank", type=click.IntRange(1, 1024), default=8, show_default=True, metavar="R",
              help="Rank of the LoRA update of each adapted layer.")
@click.option("--lora-alpha", type=click.IntRange(1, 4096), default=16, show_default=True, metavar="A",
              help="LoRA alpha: the update is scaled by A / R.")
@click.option("--target-modules", default="q_proj,v_proj", show_default=True, metavar="NAMES",
              help="Comma-separated names of the language model's linear layers to adapt (q_proj, k_proj, "
                   "v_proj, o_proj, gate_proj, up_proj, down_proj in most models); the vision tower is left alone.")
@click.option("--grad-accum", type=click.IntRange(1, 1024), default=4, show_default=True, metavar="N",
              help="Pairs per optimizer step (one pair per forward pass: memory stays that of one pair).")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              metavar="FRACTION",
              help="Keep this fraction of the pairs out of training and report their loss without and with "
                   "the adapter.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, metavar="N",
              help="Seed of LoRA's initial weights, the order of the pairs and the held-out draw.")
@click.option("--list", "list_only", is_flag=True,
              help="List the index's fine-tuned adapters (model, pairs, steps, loss, date) and train nothing.")
@click.option("--remove", is_flag=True,
              help="Drop the index's adapter for --vlm MODEL (without --vlm: every adapter) and train nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="The result as one JSON object (with --list: one object per adapter).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@reports_errors
def finetune_vlm(training_file, index_captions, home, index_name, vlm_spec, device, epochs, max_steps, learning_rate,
                 lora_rank, lora_alpha, target_modules, grad_accum, holdout, seed, list_only, remove, as_json, quiet):
    """Train a LoRA adapter of the vision-language model on your own photos with captions or
    questions and answers; caption, ask and --rerank use it from then on.

    PAIRS is a JSONL file (one object a line) or a CSV file (a header row) with the columns
    image and caption, or image, question and answer; image paths are read from the file's
    folder unless absolute. Every photo is decoded before training: one that cannot be stops
    the run, and nothing is stored. The adapter is stored in the index, for this model's
    weights only, and replaces its previous one; `caption`, `ask` and `search --rerank` with
    the same --vlm use it unless given --no-vlm-adapter.

    \b
      retriever finetune-vlm pairs.jsonl
      retriever finetune-vlm --index-captions --epochs 2
      retriever finetune-vlm pairs.csv --vlm HuggingFaceTB/SmolVLM-256M-Instruct --device cuda
      retriever finetune-vlm --list
      retriever finetune-vlm --remove --vlm HuggingFaceTB/SmolVLM-256M-Instruct
    """
    from retriever.index import Index

    chosen = [name for name, on in (("--list", list_only), ("--remove", remove)) if on]
    if len(chosen) > 1:
        raise click.UsageError("--list and --remove go alone")
    if chosen and (training_file or index_captions):
        raise click.UsageError(f"{chosen[0]} trains nothing: give no training file nor --index-captions")
    with Index.open(home_dir(home), index_name) as idx:
        if list_only:
            _list_adapters(idx, as_json)
        elif remove:
            _remove_adapters(idx, vlm_spec, as_json)
        else:
            from retriever.vlm.finetune import FinetuneOptions

            names = tuple(dict.fromkeys(n.strip() for n in target_modules.split(",") if n.strip()))
            options = FinetuneOptions(epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, rank=lora_rank,
                                      alpha=lora_alpha, target_modules=names, grad_accum=grad_accum, holdout=holdout,
                                      seed=seed)
            _train(idx, training_file, index_captions, vlm_spec, device, options, as_json, quiet)


def _train(idx, training_file, index_captions, vlm_spec, device, options, as_json, quiet) -> None:
    from retriever.cli.options import stop_on_sigterm
    from retriever.vlm.finetune import finetune_vlm, read_pairs
    from retriever.vlm.model import check_weights, resolve_device

    options.check()
    say = (lambda m: None) if quiet or as_json else (lambda m: click.echo(m, err=True))
    if training_file is None and not index_captions:
        raise click.UsageError("give a training file (JSONL or CSV), or --index-captions to train on the "
                               "index's captions")
    if training_file is not None:  # its mistakes before the model loads (read again by finetune_vlm: cheap)
        say(f"{len(read_pairs(training_file))} pairs in {shown(training_file)}")
    check_weights(vlm_spec, device)
    vlm = load_vlm_for_command(vlm_spec, resolve_device(device), say)  # the base model: no adapter
    stop_on_sigterm()
    say("decoding the photos, then training ...")
    reporter = StepReporter(enabled=not (quiet or as_json))
    try:
        result = finetune_vlm(idx, vlm, training_file, index_captions=index_captions, options=options,
                              on_step=reporter.update)
    finally:
        reporter.close()
    if as_json:
        click.echo(shown(json.dumps({**result.as_dict(), "device": vlm.device}, ensure_ascii=False)))
        return
    kinds = f"{result.captions} captions, {result.questions} questions"
    click.echo(f"trained {result.steps} steps on {result.examples} pairs ({kinds}) in {duration(result.seconds)} "
               f"on {vlm.device}: loss {result.first_loss:.4f} -> {result.final_loss:.4f}")
    if result.holdout:
        click.echo(f"held out {result.holdout} pairs: loss {result.holdout_loss_base:.4f} without the adapter, "
                   f"{result.holdout_loss_adapted:.4f} with it")
    click.echo(f"adapter saved in {shown(str(result.folder))}")
    click.echo(f"caption, ask and search --rerank with --vlm {shown(vlm.model_id)} use it from now on "
               "(--no-vlm-adapter: without it; `retriever caption --replace` captions again with it)")
    if result.skipped:
        click.echo(f"skipped {len(result.skipped)} index captions whose photo cannot be read:", err=True)
        for label, reason in result.skipped[:10]:
            click.echo(f"  {shown(label)}: {reason}", err=True)


def _list_adapters(idx, as_json: bool) -> None:
    from retriever.vlm.adapters import stored_adapters

    adapters = stored_adapters(idx.folder)
    for adapter in adapters:
        s = adapter.summary()
        if as_json:
            click.echo(shown(json.dumps(s, ensure_ascii=False)))
            continue
        loss = (f"loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}"
                if isinstance(s["first_loss"], (int, float)) and isinstance(s["final_loss"], (int, float)) else "")
        click.echo(f"{shown(adapter.base_model)}\t{s['examples']} pairs, {s['steps']} steps, {loss}, "
                   f"{s['created_at']}\t{shown(s['folder'])}")
    if not adapters and not as_json:
        click.echo(f"no fine-tuned adapters in index {idx.name!r}: run `retriever finetune-vlm PAIRS`", err=True)


def _remove_adapters(idx, vlm_spec: str | None, as_json: bool) -> None:
    from retriever.vlm.adapters import remove_adapters, stored_adapters

    model_id = None
    if vlm_spec is not None:  # the id load_vlm would give it (a folder: its absolute path), without the network
        folder = Path(vlm_spec).expanduser()
        model_id = str(folder.resolve()) if folder.is_dir() else vlm_spec
    dropped = remove_adapters(idx.folder, model_id)
    if not dropped:
        held = ", ".join(a.base_model for a in stored_adapters(idx.folder))
        which = f" for {model_id}" if model_id else ""
        raise RetrieverError(f"index {idx.name!r} holds no fine-tuned adapter{which}"
                             + (f" (it holds adapters for: {held})" if held else ""))
    if as_json:
        click.echo(shown(json.dumps({"removed": [a.summary() for a in dropped]}, ensure_ascii=False)))
        return
    for adapter in dropped:
        click.echo(f"removed the fine-tuned adapter of {shown(adapter.base_model)} ({shown(str(adapter.folder))})")


COMMANDS = [finetune_vlm]
