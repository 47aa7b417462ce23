"""Loading a vision-language model (transformers' `AutoProcessor` + `AutoModelForImageTextToText`)
and the few operations the rest of retriever needs from it: a chat prompt through the processor's
own chat template, the log-probabilities of the next token, and greedy generation, each over a
batch of prompts with their images.

Where the weights come from (`locate_model`, `resolve_model`), in this order, never waiting on a
dead network:
  1. `spec` names an existing folder: loaded from there, nothing else is tried;
  2. `spec` is a hub id (ORG/NAME; None means the default for the device, see models.py): the
     local Hugging Face cache, without any network access;
  3. otherwise one TCP connection to the hub, bounded to 3 s (`hub_reachable`, the same probe the
     encoders use; immediate with HF_HUB_OFFLINE=1): if it answers, the snapshot is downloaded
     into the cache; if not, VLMNotFoundError names the model and how to fetch it elsewhere.

Image tokens are bounded per photo (`bound_image_tokens`), so that the cost of a photo is known
and the same for every photo: SmolVLM/Idefics3 without tile splitting (one tile at the model's
tile size), Qwen2-VL under a pixel budget of QWEN_MAX_IMAGE_TOKENS tokens, LLaVA-1.5 as it is (one
fixed crop).

Precision: bfloat16 on a GPU that runs it natively, float16 on one that would only emulate it,
float32 on the CPU (model_dtype). A batch that runs out of GPU memory is halved and tried again
(VLM._in_passes), and the smaller batch kept for the rest of the run.
torch and transformers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

from retriever.errors import MissingDependencyError
from retriever.vlm.errors import VLMError, VLMLoadError, VLMNotFoundError
from retriever.vlm.models import QWEN_MAX_IMAGE_TOKENS, default_vlm

INSTALL_HINT = "pip install 'retriever[vlm]'"
# Photos are decoded (retriever's safe decoder, reduced-size JPEG decoding) to at most this many
# pixels on their longer side: above every supported model's input (SmolVLM 512, Qwen2-VL's budget
# about 517x388 for a 4:3 photo, LLaVA 336), so the processor only ever shrinks them.
PHOTO_SIDE = 768
DEFAULT_BATCH = {"cpu": 4, "cuda": 16}  # candidates per forward pass when reranking / captioning
# Files a snapshot needs; the rest of a repo (ONNX exports, GGUF files, ...) is never downloaded.
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Families prompted with a task string, not a chat (their processors have no chat template): they
# load for `retriever locate` only (see retriever/vlm/locate.py).
TASK_PROMPT_FAMILIES = ("paligemma", "florence2")


@dataclass
class VLM:
    """A loaded model with its processor. Build with `load_vlm`."""

    model: Any  # a transformers *ForConditionalGeneration, in eval mode, on `device`
    processor: Any  # its processor; the tokenizer pads on the left
    model_id: str  # the hub id, or the absolute folder: recorded with captions
    folder: str  # where the files were read from
    family: str  # the config's model_type: idefics3, llava, qwen2_vl, ...
    device: str  # "cpu", "cuda", "cuda:1"
    dtype: str  # "float32", "bfloat16", "float16"
    image_policy: str  # how image tokens are bounded, in words
    last_prompt_tokens: int = 0  # tokens (text + image) of the longest prompt of the last generate()
    batch_limit: int | None = None  # prompts per forward pass since the GPU ran out of memory (None: any)
    first_batch: int | None = None  # the batch that first ran out of memory
    adapter: dict[str, Any] | None = None  # the index's fine-tuned LoRA adapter merged in (adapters.py), or None
    adapter_note: str | None = None  # why the index's adapters were not used with this model, if it has some

    @property
    def batch_note(self) -> str | None:
        """One line when out-of-memory errors made the batches smaller, else None."""
        if self.batch_limit is None:
            return None
        return (f"the GPU ran out of memory at {self.first_batch} photos per pass: "
                f"{self.batch_limit} per pass from then on")

    # -- facts -------------------------------------------------------------------------------

    @property
    def default_batch_size(self) -> int:
        return DEFAULT_BATCH["cuda" if self.device.startswith("cuda") else "cpu"]

    @cached_property
    def image_token_id(self) -> int:
        token_id = getattr(self.processor, "image_token_id", None)
        if token_id is None:
            token = getattr(self.processor, "image_token", None) or "<image>"
            token_id = self.processor.tokenizer.convert_tokens_to_ids(token)
        return int(token_id)

    @cached_property
    def image_tokens_per_photo(self) -> int:
        """Image tokens one 4:3 photo becomes (counted in the processor's output for a blank
        PHOTO_SIDE x 3/4 image, so it is exact for this processor and its bounds)."""
        from PIL import Image

        photo = Image.new("RGB", (PHOTO_SIDE, PHOTO_SIDE * 3 // 4), (128, 128, 128))
        if self.chat:
            prompt = self.prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
        else:
            prompt = self.task_prompt("x")
        ids = self.processor(text=[prompt], images=[photo], return_tensors="pt")["input_ids"][0]
        return int((ids == self.image_token_id).sum())

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "folder": self.folder,
            "family": self.family,
            "device": self.device,
            "dtype": self.dtype,
            "image_tokens_per_photo": self.image_tokens_per_photo,
            "image_policy": self.image_policy,
            "adapter": self.adapter,
        }

    @property
    def chat(self) -> bool:
        """Whether the model takes chats: its processor has a chat template, or it is not of a
        task-prompted family (whose processors have none)."""
        return bool(getattr(self.processor, "chat_template", None)) or self.family not in TASK_PROMPT_FAMILIES

    def input_size(self, image) -> tuple[int, int] | None:
        """(width, height) in pixels of the model's input for a PIL image, for the processors that
        resize to a size of their own choosing (Qwen2-VL's family: a grid of patches); else None."""
        ip = self.processor.image_processor
        if not hasattr(ip, "merge_size"):
            return None
        grid = ip(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        return int(grid[2]) * int(ip.patch_size), int(grid[1]) * int(ip.patch_size)

    # -- prompts -----------------------------------------------------------------------------

    def task_prompt(self, text: str) -> str:
        """A prompt for one photo without a chat, for the task-prompted families (PaliGemma's
        "detect cat", Florence-2's "<CAPTION_TO_PHRASE_GROUNDING>cat"): the processor adds what
        the model expects around it; PaliGemma gets its image token in front."""
        if self.family == "paligemma":
            return f"{getattr(self.processor, 'image_token', None) or '<image>'}{text}"
        return text

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """One chat (messages with {"type": "text" | "image"} content parts) as the model's chat
        template writes it, ending with the assistant's turn. A template that refuses a system
        message gets its text at the start of the first user message instead."""
        if not self.chat:
            raise VLMError(f"{self.model_id} has no chat template: it cannot answer questions, only "
                           "`retriever locate`; use an instruction-tuned (chat) model")
        apply = self.processor.apply_chat_template
        try:
            return apply(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - jinja2's TemplateError, or a template's raise_exception
            if not messages or messages[0]["role"] != "system":
                raise VLMError(f"the chat template of {self.model_id} failed: {_one_line(exc)}") from None
        merged = merge_system_message(messages)
        try:
            return apply(merged, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001
            raise VLMError(f"the chat template of {self.model_id} failed: {_one_line(exc)}") from None

    def inputs(self, prompts: Sequence[str], images: Sequence[Any]):
        """Tensors for a batch: prompts[i] holds as many image placeholders as it has photos, and
        `images` lists every photo of every prompt, in order (the processor splits them)."""
        batch = self.processor(text=list(prompts), images=list(images) or None, padding=True, return_tensors="pt")
        batch = batch.to(self.device)
        if self.dtype != "float32":
            import torch

            batch = batch.to(getattr(torch, self.dtype))  # floating tensors only (pixel values)
        return batch

    # -- running -----------------------------------------------------------------------------

    def next_token_logprobs(self, prompts: Sequence[str], images: Sequence[Any]):
        """log P(first generated token) for each prompt: float32 tensor (batch, vocab), on the CPU.

        Through `generate` with one new token, so that left padding, position ids and each
        family's multimodal rope are handled exactly as in generation."""
        import torch

        def run(prompts, images):
            batch = self.inputs(prompts, images)
            with torch.inference_mode(), quiet_transformers():
                out = self.model.generate(
                    **batch, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True,
                    pad_token_id=self._pad_id,
                )
            return torch.log_softmax(out.logits[0].float(), dim=-1).cpu()

        return torch.cat(self._in_passes(prompts, images, run))

    def generate(self, prompts: Sequence[str], images: Sequence[Any], max_new_tokens: int, *,
                 markup: bool = False) -> list[str]:
        """Greedy continuation of each prompt, decoded without special tokens, stripped. markup:
        the tokens that write boxes are kept (Qwen2-VL's <|box_start|>, ...; see grounding.py)."""
        import torch

        def run(prompts, images):
            batch = self.inputs(prompts, images)
            self.last_prompt_tokens = max(self.last_prompt_tokens, int(batch["input_ids"].shape[1]))
            with torch.inference_mode(), quiet_transformers():
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self._pad_id)
            # an encoder-decoder (Florence-2) returns the decoder's tokens only; the others the prompt too
            config = getattr(self.model, "config", None)
            new = out if getattr(config, "is_encoder_decoder", False) else out[:, batch["input_ids"].shape[1]:]
            if markup:
                tokenizer, drop = self.processor.tokenizer, self._unmarked_special_ids
                return [tokenizer.decode([i for i in row if i not in drop], skip_special_tokens=False).strip()
                        for row in new.tolist()]
            return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]

        self.last_prompt_tokens = 0
        return [text for part in self._in_passes(prompts, images, run) for text in part]

    def _in_passes(self, prompts: Sequence[str], images: Sequence[Any], run) -> list[Any]:
        """run(prompts, images) over the whole batch, or, once the GPU ran out of memory, over
        parts of at most `batch_limit` prompts: an out-of-memory error halves the part and tries
        it again, down to one prompt. Only a batch of one prompt repeated (rerank, captions: the
        same photo placeholders in each) can be split; any other goes in one pass."""
        n = len(prompts)
        same = n > 0 and len(set(prompts)) == 1 and len(images) % n == 0
        per = len(images) // n if same else None  # photos per prompt
        size = n if per is None else min(n, self.batch_limit or n)
        parts, start = [], 0
        while start < n:
            count = min(size, n - start)
            part = images if per is None else images[start * per:(start + count) * per]
            try:
                parts.append(run(list(prompts[start:start + count]), list(part)))
            except Exception as exc:
                from retriever.encoders.cuda import is_out_of_memory, out_of_memory_at_one, release_cached_memory

                if not is_out_of_memory(exc):
                    raise
                release_cached_memory()
                if count == 1 or per is None:
                    raise out_of_memory_at_one("running the vision-language model", exc) from exc
                size = count // 2
                self.first_batch = self.first_batch or count
                self.batch_limit = size
                continue
            start += count
        return parts

    def token_ids(self, variants: Sequence[str]) -> list[int]:
        """Ids of the spellings in `variants` that are one token each (in order, no repeats);
        when none is, the first token of each spelling."""
        tokenizer = self.processor.tokenizer
        encoded = [tokenizer.encode(v, add_special_tokens=False) for v in variants]
        single = [e[0] for e in encoded if len(e) == 1]
        chosen = single or [e[0] for e in encoded if e]
        return list(dict.fromkeys(chosen))

    @cached_property
    def _unmarked_special_ids(self) -> frozenset[int]:
        """Special tokens that write no boxes (padding, end of turn, image placeholders)."""
        from retriever.vlm.grounding import is_markup_token

        tokenizer = self.processor.tokenizer
        special = set(tokenizer.all_special_ids)
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
        return frozenset(i for i in special if not is_markup_token(tokenizer.convert_ids_to_tokens(i)))

    @cached_property
    def _pad_id(self) -> int | None:
        tokenizer = self.processor.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def merge_system_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system message's text moved to the front of the first user message."""
    system, rest = messages[0], [dict(m) for m in messages[1:]]
    text = " ".join(p["text"] for p in system["content"] if p.get("type") == "text")
    for m in rest:
        if m["role"] == "user":
            m["content"] = [{"type": "text", "text": text + "\n\n"}, *m["content"]]
            break
    return rest


# -- loading ----------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    from retriever.encoders.base import auto_device

    device = auto_device(device)
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VLMError("--device cuda: no CUDA device is available here (use --device cpu)")
    if device != "cpu":
        from retriever.encoders.cuda import check_cuda_device

        check_cuda_device(device)  # cuda:N: that GPU exists
    return device


def model_dtype(device: str):
    """bfloat16 on a GPU that runs it natively (the device chosen, cuda:N included), float16 on
    one that would only emulate it (T4, V100: slow), float32 on the CPU."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    from retriever.encoders.cuda import half_dtype

    return half_dtype(device)


def locate_model(spec: str | None, device: str = "cpu") -> tuple[str, Path | None]:
    """-> (model id: the hub id, or the absolute folder; the local folder holding the files, or
    None when they are to be downloaded: not cached, and the hub answered the probe).
    Raises VLMNotFoundError, within seconds, when the weights are neither local nor reachable.
    Imports neither torch nor transformers. `device` matters only for the default model."""
    model_id = spec or default_vlm(device)
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise VLMLoadError(f"{model_id} is a folder without config.json: not a transformers model folder")
        return str(folder.resolve()), folder.resolve()
    if not _HUB_ID.match(model_id) or model_id.startswith((".", "~", "/")):
        raise VLMNotFoundError(f"no model folder {model_id} (and it is not a hub id ORG/NAME)")
    cached = _cached_snapshot(model_id)
    if cached is not None:
        return model_id, cached
    from retriever.encoders import hub_reachable

    if hub_reachable():
        return model_id, None
    raise VLMNotFoundError(
        f"{model_id} is not in the local Hugging Face cache and the hub is unreachable: on a machine with "
        f"network run `hf download {model_id} --local-dir DIR` (huggingface-cli download on older "
        f"huggingface_hub), copy DIR here and pass --vlm DIR"
    )


def check_weights(spec: str | None, device: str = "auto") -> None:
    """Fail fast, before anything slow (importing torch, loading an encoder, searching), when the
    model cannot be had. With no spec and device "auto", either default will do."""
    if spec is None and device == "auto":
        if any(_cached_snapshot(default_vlm(d)) is not None for d in ("cuda", "cpu")):
            return
        device = "cpu"  # one hub probe; the error names the CPU default
    locate_model(spec, device)


def resolve_model(spec: str | None, device: str = "cpu") -> tuple[str, Path]:
    """-> (model id, local folder), downloading the snapshot when it is not cached and the hub
    answers. See the module docstring and locate_model."""
    model_id, folder = locate_model(spec, device)
    if folder is not None:
        return model_id, folder
    from huggingface_hub import snapshot_download

    try:
        return model_id, Path(snapshot_download(model_id, allow_patterns=SNAPSHOT_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - hub errors (404, gated, network dropped) come in many types
        raise VLMNotFoundError(f"cannot download {model_id}: {_one_line(exc)}") from None


def model_type_of(folder: str | Path | None) -> str | None:
    """The model_type in a model folder's config.json (None: no folder, no readable config);
    read without loading anything, so that a command can refuse a model before it loads it."""
    if folder is None:
        return None
    try:
        import json

        value = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of a hub repo, when it holds a config and weights; never the network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and kin: simply not cached
        return None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return folder if (folder / "config.json").is_file() and has_weights else None


def load_vlm(spec: str | None = None, device: str = "auto", *, max_image_tokens: int | None = None,
             adapter_from: str | Path | None = None) -> VLM:
    """Load a vision-language model: `spec` is a folder, a hub id, or None for the default
    (HuggingFaceTB/SmolVLM-256M-Instruct on the CPU, HuggingFaceTB/SmolVLM-Instruct on CUDA).
    max_image_tokens: the image-token budget per photo of dynamic-resolution models (Qwen2-VL),
    QWEN_MAX_IMAGE_TOKENS by default; fixed-size models ignore it. adapter_from: an index folder:
    the LoRA adapter `retriever finetune-vlm` stored there for these weights is merged in
    (vlm.adapter says which; vlm.adapter_note why none, when the index holds others; see
    adapters.py); None: the base model as published.

    Raises MissingDependencyError without transformers, VLMNotFoundError when the weights cannot
    be had (within seconds), VLMLoadError when the folder is not a chat-capable VLM, DeviceError
    when the GPU cannot hold or run it (out of memory, no kernel for it, a torch for another CUDA)."""
    try:
        import torch  # noqa: F401 - said here, with what to install, when missing
        from transformers import AutoModelForImageTextToText, AutoProcessor
    except ImportError:
        raise MissingDependencyError(f"the VLM features need transformers: {INSTALL_HINT}") from None
    device = resolve_device(device)
    model_id, folder = resolve_model(spec, device)
    dtype = model_dtype(device)
    try:
        with quiet_transformers():
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except ImportError as exc:  # a processor's own optional dependency (num2words for SmolVLM2, ...)
        raise VLMLoadError(f"cannot load {model_id}: {_one_line(exc)}") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        from retriever.encoders.cuda import raise_if_cuda_failure

        raise_if_cuda_failure(exc, f"cannot load {model_id} on {device}")  # the GPU's failure, named
        raise VLMLoadError(f"cannot load {model_id} as a vision-language model: {_one_line(exc)}") from None
    if getattr(processor, "tokenizer", None) is None or not hasattr(processor, "image_processor"):
        raise VLMLoadError(f"{model_id}: its processor has no tokenizer or no image processor")
    family = str(getattr(model.config, "model_type", "unknown"))
    if not getattr(processor, "chat_template", None) and family not in TASK_PROMPT_FAMILIES:
        raise VLMLoadError(f"{model_id} has no chat template: use an instruction-tuned (chat) model")
    processor.tokenizer.padding_side = "left"  # batched generation continues every row at the end
    from retriever.encoders.cuda import cuda_errors_named

    with cuda_errors_named(f"cannot load {model_id} on {device}"):  # out of memory, no kernel: said as such
        model = model.to(device).eval()
    vlm = VLM(
        model=model,
        processor=processor,
        model_id=model_id,
        folder=str(folder),
        family=family,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        image_policy=bound_image_tokens(processor, max_image_tokens or QWEN_MAX_IMAGE_TOKENS),
    )
    if adapter_from is not None:
        from retriever.vlm.adapters import apply_index_adapter

        apply_index_adapter(vlm, adapter_from)
    return vlm


def bound_image_tokens(processor, max_image_tokens: int = QWEN_MAX_IMAGE_TOKENS) -> str:
    """Make every photo cost a bounded, known number of image tokens; -> the policy in words.

    SmolVLM / Idefics3: no tile splitting, the photo resized to one tile (e.g. 512 px -> 64 tokens
    for SmolVLM-256M), instead of up to 16 tiles + 1. Qwen2-VL / Qwen2.5-VL: a pixel budget of
    max_image_tokens tokens (aspect kept). Others (LLaVA-1.5: one 336 px crop) are fixed."""
    ip = processor.image_processor
    if hasattr(ip, "do_image_splitting") and getattr(ip, "max_image_size", None):
        ip.do_image_splitting = False
        tile = _get(ip.max_image_size, "longest_edge")
        ip.size = {"longest_edge": tile}
        return f"no tile splitting: one {tile}x{tile} tile"
    if hasattr(ip, "merge_size") and getattr(ip, "size", None) is not None and _get(ip.size, "longest_edge"):
        pixels_per_token = (int(ip.patch_size) * int(ip.merge_size)) ** 2
        budget = min(int(_get(ip.size, "longest_edge")), max_image_tokens * pixels_per_token)
        least = int(_get(ip.size, "shortest_edge") or 4 * pixels_per_token)
        ip.size = {"shortest_edge": min(least, budget), "longest_edge": budget}
        if hasattr(ip, "max_pixels"):
            ip.max_pixels = budget
        return f"at most {budget // pixels_per_token} tokens: {budget} pixels, aspect kept"
    crop = getattr(ip, "crop_size", None)
    if crop:
        return f"one {_get(crop, 'height')}x{_get(crop, 'width')} crop"
    return "the processor's own defaults"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' notices (weight-loading reports, generation-flag advice) and progress bars
    off for a while: the library does not print."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _get(mapping, key: str):
    """A key of a size dict, or an attribute of transformers' SizeDict."""
    if isinstance(mapping, dict):
        return mapping.get(key)
    return getattr(mapping, key, None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
