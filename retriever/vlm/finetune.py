"""`retriever finetune-vlm`: a LoRA adapter (PEFT) of a vision-language model, trained on the user's
own (photo, caption) and (photo, question, answer) pairs, stored in the index (adapters.py) and
used from then on by caption, ask and search --rerank (model.load_vlm(..., adapter_from=INDEX)).

Training data (read_pairs, index_caption_pairs):
  - a JSONL file (one object a line) or a CSV file (a header row) with the columns `image` and
    `caption`, or `image`, `question` and `answer`; a row with all four gives two examples. An
    image path that is not absolute is read from the training file's folder. Another column, a
    row without an image or without text, a question without an answer, an image file that does
    not exist: a TrainingDataError naming the row, before anything is loaded.
  - with index_captions, the captions stored in the index (`retriever caption` writes them).

Photos: every photo of the training file is decoded before training starts, and one that cannot
be (damaged, not an image) stops the run with its row named: nothing is trained or stored. A
photo of the index's captions that cannot be read any more (deleted since it was indexed) is
skipped and reported instead: the catalog is not a list the user wrote.

Each example is the chat the model gets at inference, written by its own chat template: a caption
answers `caption_messages()` (what `retriever caption` asks), an answer answers
`ask_messages(question, 1)` (what `retriever ask --image PHOTO` asks). The sequence is that
prompt (`VLM.prompt`, as at inference) followed by the assistant's turn as the template writes
it, up to and including the end-of-turn token (so the adapted model stops where the data stops);
the loss is on that turn's tokens only (the prompt's labels are -100).

Training: LoRA on the language model's attention projections (q_proj and v_proj by default; the
vision tower is left alone), AdamW with the learning rate decayed linearly to zero, one example
per forward pass with gradient accumulation, the gradient norm clipped at 1. On CUDA the base
weights stay in the half precision load_vlm chose (bf16, or fp16 where bf16 is emulated) under
autocast while the LoRA weights are fp32 (fp16: with a gradient scaler); on the CPU all is fp32.
`holdout` keeps a fraction of the pairs out of training and reports their loss under the base
model and under the adapter: what the adapter learnt beyond memorising its pairs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from retriever.errors import RetrieverError
from retriever.vlm.adapters import (
    LOCK_FILE,
    AdapterError,
    adapters_folder,
    base_fingerprint,
    import_peft,
    new_adapter_folder,
    quiet_peft,
    store_adapter,
)
from retriever.vlm.errors import VLMError
from retriever.vlm.model import merge_system_message, quiet_transformers
from retriever.vlm.photos import load_photo
from retriever.vlm.prompts import ask_messages, caption_messages

COLUMNS = ("image", "caption", "question", "answer")
DEFAULT_TARGETS = ("q_proj", "v_proj")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
MAX_GRAD_NORM = 1.0


class TrainingDataError(VLMError):
    """The training file, or one of its rows or photos, cannot be used; the message names it."""


@dataclass(frozen=True)
class Pair:
    """One training example."""

    image: str  # the photo's absolute path
    answer: str  # the caption, or the answer to `question`
    question: str | None = None  # None: `answer` is a caption
    frame_ms: int | None = None  # a video frame (captions stored in the index only)
    source: str = ""  # where it came from, for messages: "pairs.csv row 3", "index caption of PATH"


@dataclass
class FinetuneOptions:
    """How to train; every field has a default that suits a few hundred pairs."""

    epochs: int = 3  # passes over the training pairs (max_steps, when given, decides instead)
    max_steps: int | None = None  # optimizer steps in all, cycling through the pairs as often as needed
    learning_rate: float = 2e-4  # AdamW's, at the first step; decays linearly to 0 at the last
    rank: int = 8  # LoRA rank r
    alpha: int = 16  # LoRA alpha: the update is scaled by alpha / r
    dropout: float = 0.05  # LoRA dropout
    target_modules: tuple[str, ...] = DEFAULT_TARGETS  # names of the language model's linear layers to adapt
    grad_accum: int = 4  # examples per optimizer step, one per forward pass
    holdout: float = 0.0  # fraction of the pairs kept out of training, whose loss is reported
    seed: int = 0  # LoRA's initial weights, the order of the pairs, the holdout, dropout

    def check(self) -> None:
        problems = [
            (self.epochs < 1, "--epochs must be at least 1"),
            (self.max_steps is not None and self.max_steps < 1, "--max-steps must be at least 1"),
            (not (0 < self.learning_rate < 1) or self.learning_rate != self.learning_rate,
             "--learning-rate must be between 0 and 1 (e.g. 2e-4)"),
            (self.rank < 1 or self.alpha < 1, "--lora-rank and --lora-alpha must be at least 1"),
            (not (0 <= self.dropout < 1), "the LoRA dropout must be in [0, 1)"),
            (not self.target_modules, "--target-modules names no layer"),
            (self.grad_accum < 1, "--grad-accum must be at least 1"),
            (not (0 <= self.holdout < 1), "--holdout must be a fraction in [0, 1)"),
        ]
        for bad, message in problems:
            if bad:
                raise VLMError(message)


@dataclass
class TrainingStep:
    """One optimizer step, for a progress callback."""

    step: int  # from 1
    steps: int  # in all
    loss: float  # mean loss of its examples (answer tokens only)
    learning_rate: float  # the rate this step used
    elapsed: float  # seconds since training started


@dataclass
class FinetuneResult:
    folder: Path  # where the adapter was stored
    base_model: str
    examples: int  # pairs trained on
    captions: int  # of them, captions
    questions: int  # of them, questions with answers
    holdout: int  # pairs kept out of training
    steps: int
    losses: list[float]  # per step
    holdout_loss_base: float | None = None  # mean loss of the held-out pairs without the adapter
    holdout_loss_adapted: float | None = None  # and with it
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (index caption's photo, why): unreadable

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def as_dict(self) -> dict[str, Any]:
        rounded = (lambda x: None if x is None else round(x, 6))
        return {
            "adapter": str(self.folder), "base_model": self.base_model, "examples": self.examples,
            "captions": self.captions, "questions": self.questions, "holdout": self.holdout, "steps": self.steps,
            "first_loss": rounded(self.first_loss), "final_loss": rounded(self.final_loss),
            "losses": [rounded(x) for x in self.losses],
            "holdout_loss_base": rounded(self.holdout_loss_base),
            "holdout_loss_adapted": rounded(self.holdout_loss_adapted),
            "seconds": round(self.seconds, 3),
            "skipped": [{"path": label, "reason": reason} for label, reason in self.skipped],
        }


# -- the training data --------------------------------------------------------------------------------


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a JSONL or CSV training file (see the module docstring). Raises
    TrainingDataError, naming the row, for anything it cannot use; decodes no photo."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainingDataError(f"no such training file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingDataError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    first = text.lstrip()[:1]
    jsonl = path.suffix.lower() in JSONL_SUFFIXES or (path.suffix.lower() != ".csv" and first == "{")
    rows = _jsonl_rows(text, path) if jsonl else _csv_rows(text, path)
    pairs = [pair for where, row in rows for pair in _row_pairs(row, where, path.parent.resolve())]
    if not pairs:
        raise TrainingDataError(f"{path} holds no training pairs (columns: image, and caption or question and answer)")
    return pairs


def _jsonl_rows(text: str, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TrainingDataError(f"{where}: not JSON ({exc.args[0] if exc.args else exc})") from None
        if not isinstance(row, dict):
            raise TrainingDataError(f"{where}: not a JSON object with image and caption (or question and answer)")
        yield where, row


def _csv_rows(text: str, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        if not reader.fieldnames:
            raise TrainingDataError(f"{path} is empty: a CSV file needs a header row (image,caption or "
                                    "image,question,answer)")
        _check_columns([name.strip() for name in reader.fieldnames], f"{path.name} header")
        for row in reader:
            where = f"{path.name} line {reader.line_num}"
            if None in row:
                raise TrainingDataError(f"{where}: more cells than the header has columns")
            if any((v or "").strip() for v in row.values()):
                yield where, {k.strip(): v for k, v in row.items()}
    except csv.Error as exc:
        raise TrainingDataError(f"{path.name}: not a CSV file ({exc})") from None


def _check_columns(names: Sequence[str], where: str) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise TrainingDataError(f"{where}: unknown column {', '.join(map(repr, unknown))}: the columns are "
                                f"{', '.join(COLUMNS)}")


def _row_pairs(row: dict[str, Any], where: str, folder: Path) -> list[Pair]:
    _check_columns(list(row), where)
    values: dict[str, str] = {}
    for name in COLUMNS:
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise TrainingDataError(f"{where}: {name} must be text, not {json.dumps(value)[:40]}")
        values[name] = " ".join((value or "").split())
    if not values["image"]:
        raise TrainingDataError(f"{where}: no image")
    caption, question, answer = values["caption"], values["question"], values["answer"]
    if bool(question) != bool(answer):
        missing = "a question without an answer" if question else "an answer without a question"
        raise TrainingDataError(f"{where}: {missing}")
    if not caption and not question:
        raise TrainingDataError(f"{where}: empty caption (give a caption, or a question and its answer)")
    image = Path(os.path.expanduser(values["image"]))
    image = image if image.is_absolute() else folder / image
    if not image.is_file():
        raise TrainingDataError(f"{where}: no such image file: {image}")
    path = str(image.resolve())
    pairs = [Pair(path, caption, None, None, where)] if caption else []
    return pairs + ([Pair(path, answer, question, None, where)] if question else [])


def index_caption_pairs(index) -> list[Pair]:
    """One caption pair per caption stored in the index (photos and video frames)."""
    from retriever.vlm.captions import all_captions

    return [Pair(row["path"], " ".join(row["caption"].split()), None, row["frame_ms"],
                 f"index caption of {row['label']}") for row in all_captions(index.catalog) if row["caption"].strip()]


def check_photos(pairs: Sequence[Pair], load: Callable[..., Any] = load_photo, *,
                 skip: bool = False) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Decode every photo once. -> (the pairs whose photo decodes, (source, reason) of the others);
    without skip, the first photo that does not decode is a TrainingDataError naming its row."""
    good, failed = [], []
    reasons: dict[tuple[str, int | None], str | None] = {}
    for pair in pairs:
        key = (pair.image, pair.frame_ms)
        if key not in reasons:
            try:
                load(pair.image, pair.frame_ms)
                reasons[key] = None
            except RetrieverError as exc:
                reasons[key] = str(getattr(exc, "reason", exc))
        if reasons[key] is None:
            good.append(pair)
        elif skip:
            failed.append((pair.source.removeprefix("index caption of "), reasons[key]))
        else:
            raise TrainingDataError(f"{pair.source}: cannot read the photo {pair.image}: {reasons[key]}")
    return good, failed


def gather_pairs(index, training_file: str | Path | None, index_captions: bool,
                 load: Callable[..., Any] = load_photo) -> tuple[list[Pair], list[tuple[str, str]]]:
    """The pairs to train on, every photo decoded once: (pairs, skipped index captions)."""
    if training_file is None and not index_captions:
        raise TrainingDataError("nothing to train on: give a training file (JSONL or CSV), or use the index's "
                                "captions (--index-captions)")
    pairs = check_photos(read_pairs(training_file), load)[0] if training_file is not None else []
    skipped: list[tuple[str, str]] = []
    if index_captions:
        stored = index_caption_pairs(index)
        if not stored and not pairs:
            raise TrainingDataError(f"index {index.name!r} holds no captions: run `retriever caption` first")
        readable, skipped = check_photos(stored, load, skip=True)
        pairs += readable
    if not pairs:
        raise TrainingDataError("none of the photos could be read: " + "; ".join(f"{p}: {r}" for p, r in skipped[:3]))
    return pairs, skipped


# -- examples -------------------------------------------------------------------------------------------


def example_messages(pair: Pair) -> list[dict[str, Any]]:
    """The chat the model gets for this pair at inference (see the module docstring)."""
    return caption_messages() if pair.question is None else ask_messages(pair.question, 1)


def answer_turn(vlm, messages: list[dict[str, Any]], prompt: str, answer: str) -> str:
    """The assistant's turn after `prompt` as the chat template writes it, up to and including its
    end-of-turn token (the model's end-of-sequence token appended when the template writes none)."""
    turn = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    tail = None
    candidates = [messages] + ([merge_system_message(messages)] if messages[0]["role"] == "system" else [])
    for chat in candidates:  # as VLM.prompt: the system message merged only where the template refuses it
        try:
            rendered = vlm.processor.apply_chat_template([*chat, turn], add_generation_prompt=False, tokenize=False)
        except Exception:  # noqa: BLE001, S112 - jinja2's TemplateError, a template's raise_exception
            continue
        if rendered.startswith(prompt) and answer in rendered[len(prompt):]:
            tail = rendered[len(prompt):]
        break
    ends = _end_tokens(vlm)
    if tail is None:
        return answer + (ends[0] if ends else "")
    cut = [tail.find(e, tail.find(answer) + len(answer)) for e in ends]
    cut = [at + len(e) for at, e in zip(cut, ends) if at >= 0]
    return tail[:min(cut)] if cut else tail.rstrip() + (ends[0] if ends else "")


def _end_tokens(vlm) -> list[str]:
    """The tokens that end generation (generation config first, then the tokenizer's eos)."""
    tokenizer = vlm.processor.tokenizer
    ids = getattr(getattr(vlm.model, "generation_config", None), "eos_token_id", None)
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
    ids.append(tokenizer.eos_token_id)
    tokens = [tokenizer.convert_ids_to_tokens(int(i)) for i in ids if i is not None]
    return list(dict.fromkeys(t for t in tokens if t))


class Examples:
    """Pairs made into model inputs on demand (photos decoded again each time: only the token
    count of each prompt is kept, so memory stays flat for thousands of pairs)."""

    def __init__(self, vlm, pairs: Sequence[Pair], load: Callable[..., Any] = load_photo):
        self.vlm, self.pairs, self.load = vlm, list(pairs), load
        self._prompt_tokens: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        """-> (inputs on the model's device, labels: the input ids with -100 on the prompt)."""
        pair, vlm = self.pairs[i], self.vlm
        photo = self.load(pair.image, pair.frame_ms)
        messages = example_messages(pair)
        prompt = vlm.prompt(messages)
        inputs = vlm.inputs([prompt + answer_turn(vlm, messages, prompt, pair.answer)], [photo])
        ids = inputs["input_ids"]
        if i not in self._prompt_tokens:
            prompt_ids = vlm.inputs([prompt], [photo])["input_ids"][0].tolist()
            full = ids[0, :len(prompt_ids)].tolist()
            same = next((k for k, (a, b) in enumerate(zip(prompt_ids, full)) if a != b), len(prompt_ids))
            self._prompt_tokens[i] = same  # where tokenising the whole merged across the boundary: from there
        labels = ids.clone()
        labels[:, :self._prompt_tokens[i]] = -100
        if "attention_mask" in inputs:
            labels[inputs["attention_mask"] == 0] = -100
        return inputs, labels


# -- training --------------------------------------------------------------------------------------------


def lora_targets(vlm, names: Sequence[str]) -> list[str]:
    """Full names of the language model's linear layers whose last name is in `names`."""
    import torch

    model = vlm.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((n for n, m in model.named_modules() if m is decoder and n), None)
    if prefix is None:
        raise VLMError(f"{vlm.model_id}: cannot find its language model to fine-tune")
    linear = [n for n, m in model.named_modules() if n.startswith(prefix + ".") and isinstance(m, torch.nn.Linear)]
    chosen = [n for n in linear if n.rsplit(".", 1)[-1] in set(names)]
    if not chosen:
        present = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise VLMError(f"--target-modules {','.join(names)}: no such layer in the language model of {vlm.model_id} "
                       f"(it has {', '.join(present)})")
    return chosen


def step_plan(examples: int, options: FinetuneOptions) -> list[list[int]]:
    """The examples of each optimizer step: the pairs shuffled anew each epoch, grad_accum a step;
    max_steps steps when given (as many epochs as that takes), else `epochs` passes."""
    rng = random.Random(options.seed)
    epochs = options.epochs
    if options.max_steps is not None:
        epochs = math.ceil(options.max_steps * options.grad_accum / examples)
    stream: list[int] = []
    for _ in range(epochs):
        order = list(range(examples))
        rng.shuffle(order)
        stream += order
    if options.max_steps is not None:
        stream = stream[:options.max_steps * options.grad_accum]
    return [stream[i:i + options.grad_accum] for i in range(0, len(stream), options.grad_accum)]


def finetune_vlm(index, vlm, training_file: str | Path | None = None, *, index_captions: bool = False,
                 options: FinetuneOptions | None = None, on_step: Callable[[TrainingStep], None] | None = None,
                 load: Callable[..., Any] = load_photo) -> FinetuneResult:
    """Train a LoRA adapter of `vlm` (a base model from model.load_vlm, without adapter_from) on the
    pairs of `training_file` and (index_captions) the captions stored in `index` (an opened
    retriever.index.Index), and store it in the index, replacing this model's previous one.

    Raises TrainingDataError before anything is trained for bad data, VLMError for bad options,
    IndexLockedError while another fine-tuning run works on the index. Ctrl-C or any error stores
    nothing (the previous adapter stays). `vlm` is the base model again when this returns."""
    options = options or FinetuneOptions()
    options.check()
    if getattr(vlm, "adapter", None):
        raise AdapterError("the model was loaded with the index's adapter: fine-tune the base model "
                           "(load it without one)")
    if not vlm.chat:
        raise VLMError(f"{vlm.model_id} has no chat template: only chat models can be fine-tuned here")
    peft = import_peft()
    targets = lora_targets(vlm, options.target_modules)
    pairs, skipped = gather_pairs(index, training_file, index_captions, load)
    train, held = _split(pairs, options)
    started = time.monotonic()
    from retriever.durable import private_folder, run_lock

    lock = private_folder(adapters_folder(index.folder)) / LOCK_FILE
    with run_lock(lock, _now(), f"another finetune-vlm run is training on index {index.name!r}"):
        fingerprint = base_fingerprint(vlm.folder)
        base_loss = _mean_loss(vlm, Examples(vlm, held, load)) if held else None
        import torch

        torch.manual_seed(options.seed)
        config = peft.LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                                 target_modules=targets, bias="none")
        with quiet_transformers(), quiet_peft():
            wrapped = peft.get_peft_model(vlm.model, config)
        tmp = None
        try:
            losses = _train(vlm, wrapped, Examples(vlm, train, load), options, on_step, started)
            adapted_loss = _mean_loss(vlm, Examples(vlm, held, load), wrapped) if held else None
            tmp = new_adapter_folder(index.folder, vlm.model_id)
            wrapped.save_pretrained(str(tmp))
            questions = sum(1 for p in train if p.question is not None)
            result = FinetuneResult(tmp, vlm.model_id, len(train), len(train) - questions, questions, len(held),
                                    len(losses), losses, base_loss, adapted_loss, time.monotonic() - started, skipped)
            info = {
                "base_model": vlm.model_id, "base_folder": vlm.folder, "base_fingerprint": fingerprint,
                "family": vlm.family, "created_at": _now(),
                "training_file": None if training_file is None else str(Path(training_file).expanduser().resolve()),
                "index_captions": index_captions, "device": vlm.device, "dtype": vlm.dtype,
                **{k: v for k, v in result.as_dict().items() if k not in ("adapter", "losses", "skipped")},
                "skipped": len(skipped), "learning_rate": options.learning_rate, "rank": options.rank,
                "alpha": options.alpha, "dropout": options.dropout, "target_modules": list(options.target_modules),
                "grad_accum": options.grad_accum, "epochs": options.epochs, "max_steps": options.max_steps,
                "holdout_fraction": options.holdout, "seed": options.seed,
            }
            result.folder = store_adapter(tmp, info)
            tmp = None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            vlm.model = wrapped.unload().eval()  # the base model again, LoRA layers gone
    return result


def _split(pairs: list[Pair], options: FinetuneOptions) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs): `holdout` of the pairs, drawn with the seed, at least one
    when asked and at least one left to train on."""
    if not options.holdout:
        return pairs, []
    if len(pairs) < 2:
        raise TrainingDataError("--holdout needs at least 2 pairs")
    order = list(range(len(pairs)))
    random.Random(options.seed).shuffle(order)
    count = min(len(pairs) - 1, max(1, round(options.holdout * len(pairs))))
    held = set(order[:count])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _autocast(vlm):
    """bf16/fp16 autocast on CUDA (the base weights' precision), nothing on the CPU."""
    import contextlib

    import torch

    if vlm.device.startswith("cuda") and vlm.dtype in ("bfloat16", "float16"):
        return torch.autocast("cuda", dtype=getattr(torch, vlm.dtype))
    return contextlib.nullcontext()


def _train(vlm, model, examples: Examples, options: FinetuneOptions,
           on_step: Callable[[TrainingStep], None] | None, started: float) -> list[float]:
    import torch

    from retriever.encoders.cuda import cuda_errors_named

    plan = step_plan(len(examples), options)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / len(plan))
    scaler = torch.amp.GradScaler("cuda") if vlm.device.startswith("cuda") and vlm.dtype == "float16" else None
    losses: list[float] = []
    model.train()
    try:
        with cuda_errors_named(f"fine-tuning {vlm.model_id} on {vlm.device}"):
            for number, chosen in enumerate(plan, start=1):
                rate = schedule.get_last_lr()[0]
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for i in chosen:
                    inputs, labels = examples[i]
                    with _autocast(vlm):
                        loss = model(**inputs, labels=labels).loss
                    if not torch.isfinite(loss):
                        raise VLMError(f"the loss became {loss.item()} at step {number}: try a lower --learning-rate")
                    scaled = loss / len(chosen)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    total += float(loss.detach()) / len(chosen)
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                schedule.step()
                losses.append(total)
                if on_step:
                    on_step(TrainingStep(number, len(plan), total, rate, time.monotonic() - started))
    finally:
        model.eval()
    return losses


def _mean_loss(vlm, examples: Examples, model=None) -> float:
    """Mean loss over the examples (answer tokens only), without gradients."""
    import torch

    model = model if model is not None else vlm.model
    total = 0.0
    with torch.no_grad():
        for i in range(len(examples)):
            inputs, labels = examples[i]
            with _autocast(vlm):
                total += float(model(**inputs, labels=labels).loss)
    return total / len(examples)


def example_loss(vlm, pair: Pair, load: Callable[..., Any] = load_photo) -> float:
    """The model's loss on one pair (answer tokens only): lower when it finds the answer likelier."""
    return _mean_loss(vlm, Examples(vlm, [pair], load))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
