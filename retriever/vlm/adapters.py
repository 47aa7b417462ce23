"""Fine-tuned LoRA adapters of a vision-language model, stored in an index, and applied when the
model is loaded for that index (retriever finetune-vlm writes them: retriever/vlm/finetune.py).

    INDEX/vlm-adapters/<model key>/adapter_config.json        peft's save_pretrained
    INDEX/vlm-adapters/<model key>/adapter_model.safetensors
    INDEX/vlm-adapters/<model key>/retriever-adapter.json     what it was trained on (ADAPTER_INFO)

One adapter per base model (the key is made from the model id). An adapter is used only with
the weights it was trained on: its info records a fingerprint of the base model's files
(`base_fingerprint`), and a model whose files differ (another model, another version of the
same one, a local folder with other weights) does not get it; `find_adapter` says why in one
line. The fingerprint, not the model id, decides: a folder holding a copy of the hub model that
the adapter was trained on gets it too.

An adapter is written whole or not at all (`store_adapter`): into a temporary folder beside the
others, then renamed into place; a folder without its info file (a copy in progress, a kill) is
never used. Nothing here imports torch or peft at import time, nor anything from model.py: the
loader (model.load_vlm) calls `apply_index_adapter` on what it loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from retriever.errors import MissingDependencyError
from retriever.vlm.errors import VLMError

ADAPTERS_FOLDER = "vlm-adapters"
ADAPTER_INFO = "retriever-adapter.json"
ADAPTER_FORMAT = 1  # the layout above; an adapter of another format is not used
LOCK_FILE = "finetune.lock"
_SAMPLE = 1 << 20  # bytes read at the start, middle and end of each weights file for the fingerprint
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


class AdapterError(VLMError):
    """A stored adapter cannot be used or written (another base model, a damaged folder)."""


@dataclass(frozen=True)
class StoredAdapter:
    folder: Path  # INDEX/vlm-adapters/<key>
    info: dict[str, Any]  # its retriever-adapter.json

    @property
    def base_model(self) -> str:
        return str(self.info.get("base_model", "?"))

    def summary(self) -> dict[str, Any]:
        """What commands show of it: the model, the data, the training, where it lies."""
        keys = ("base_model", "examples", "steps", "first_loss", "final_loss", "created_at", "rank", "alpha",
                "target_modules")
        return {**{k: self.info.get(k) for k in keys}, "folder": str(self.folder)}


# -- identity -----------------------------------------------------------------------------------------


def model_key(model_id: str) -> str:
    """A folder name for a model id: a hub id ORG/NAME as ORG--NAME (as the Hugging Face cache
    names it); a local folder as its name and a short hash of its absolute path."""
    if Path(model_id).is_absolute():
        tail = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_id).name)[:60].strip("-.") or "model"
        return f"{tail}-{hashlib.sha256(model_id.encode()).hexdigest()[:10]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.replace("/", "--"))[:120]


def base_fingerprint(folder: str | Path) -> str:
    """A fingerprint of a model folder's weights, in milliseconds whatever their size: sha256 over
    config.json and, for each weights file, its name, size and 1 MiB read at its start, middle and
    end. Two models that differ anywhere but in the exact same bytes of every sample get two
    fingerprints (random or trained weights differ everywhere; a fine-tuned copy too)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    try:
        digest.update((folder / "config.json").read_bytes())
        files = sorted({p for pattern in _WEIGHTS for p in folder.glob(pattern)})
        for path in files:
            size = path.stat().st_size
            digest.update(f"\0{path.name}\0{size}\0".encode())
            with open(path, "rb") as f:
                for at in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                    f.seek(at)
                    digest.update(f.read(_SAMPLE))
    except OSError as exc:
        raise AdapterError(f"cannot read the model files in {folder}: {exc.strerror or exc}") from None
    return "sha256:" + digest.hexdigest()


# -- reading --------------------------------------------------------------------------------------------


def adapters_folder(index_folder: str | Path) -> Path:
    return Path(index_folder) / ADAPTERS_FOLDER


def stored_adapters(index_folder: str | Path) -> list[StoredAdapter]:
    """Every complete adapter of the index (a folder with a readable info file of this format and
    its weights), by key."""
    root = adapters_folder(index_folder)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        info = _read_info(folder)
        if info is not None:
            found.append(StoredAdapter(folder, info))
    return found


def _read_info(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / ADAPTER_INFO).read_text())
    except (OSError, ValueError):
        return None
    complete = (folder / "adapter_config.json").is_file() and any(folder.glob("adapter_model.*"))
    if not isinstance(info, dict) or info.get("format") != ADAPTER_FORMAT or not complete:
        return None
    return info


def find_adapter(index_folder: str | Path, model_id: str,
                 model_folder: str | Path) -> tuple[StoredAdapter | None, str | None]:
    """-> (the index's adapter trained on exactly this model's weights, or None; a one-line note
    when the index holds adapters that this model does not get, else None)."""
    adapters = stored_adapters(index_folder)
    if not adapters:
        return None, None
    fingerprint = base_fingerprint(model_folder)
    for adapter in adapters:
        if adapter.info.get("base_fingerprint") == fingerprint:
            return adapter, None
    same_name = [a for a in adapters if a.base_model == model_id]
    if same_name:
        return None, (f"the fine-tuned adapter in {same_name[0].folder} was trained on other weights of {model_id} "
                      f"(its files changed since): not used; run `retriever finetune-vlm` again, or drop it with "
                      f"`retriever finetune-vlm --remove`")
    others = ", ".join(a.base_model for a in adapters)
    return None, f"the index's fine-tuned adapters are for other models ({others}): none used with {model_id}"


def recorded_model(index_folder: str | Path, model_id: str, model_folder: str | Path | None) -> str:
    """The model as captions record it: its id, and the date of the index's adapter it runs with
    ("ORG/NAME (fine-tuned 2025-01-31T12:00:00+00:00)"), so that `caption --replace` writes again
    the captions made without this adapter (by the base model, or an earlier adapter)."""
    adapter = find_adapter(index_folder, model_id, model_folder)[0] if model_folder is not None else None
    return model_id if adapter is None else f"{model_id} (fine-tuned {adapter.info.get('created_at')})"


# -- applying ---------------------------------------------------------------------------------------------


def apply_index_adapter(vlm: Any, index_folder: str | Path) -> None:
    """Give a loaded VLM (retriever.vlm.model.VLM, without an adapter) the index's adapter for its
    weights, merged into them (generation runs as fast as the base model's): sets vlm.adapter
    to the adapter's summary; vlm.adapter_note to why none was used, when the index has others."""
    adapter, note = find_adapter(index_folder, vlm.model_id, vlm.folder)
    vlm.adapter_note = note
    if adapter is None:
        return
    vlm.model = merged(vlm.model, adapter.folder)
    vlm.adapter = adapter.summary()


def merged(model: Any, folder: Path) -> Any:
    """The transformers model with the LoRA adapter in `folder` merged into its weights."""
    peft = import_peft()
    try:
        with quiet_peft():
            wrapped = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        return wrapped.merge_and_unload().eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise AdapterError(f"cannot apply the fine-tuned adapter in {folder}: {text} (drop it with "
                           f"`retriever finetune-vlm --remove`, or pass --no-vlm-adapter)") from None


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Without the deprecation notice peft 0.21 triggers in transformers 5 when it wraps a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def import_peft():
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("fine-tuned VLM adapters need peft: pip install 'retriever[vlm]'") from None
    return peft


# -- writing ------------------------------------------------------------------------------------------------


def new_adapter_folder(index_folder: str | Path, model_id: str) -> Path:
    """An empty private temporary folder beside the stored adapters, to be filled and then passed
    to store_adapter; temporary folders left by runs that died are removed first."""
    from retriever.durable import pid_alive, private_folder

    root = private_folder(adapters_folder(index_folder))
    for stale in root.glob(".*.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{model_key(model_id)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return private_folder(tmp)


def store_adapter(tmp: Path, info: dict[str, Any]) -> Path:
    """Write the info file into `tmp` (holding peft's adapter files), make it all private and
    durable, and put it in place of the model's previous adapter. -> its folder."""
    from retriever.durable import PRIVATE_DIR, PRIVATE_FILE, fsync_folder

    info = {"format": ADAPTER_FORMAT, **info}
    (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")
    for path in tmp.rglob("*"):
        os.chmod(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    fsync_folder(tmp)
    final = tmp.parent / model_key(info["base_model"])
    old = tmp.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)  # a kill from here to the next rename leaves no adapter, never half of one
    os.replace(tmp, final)
    fsync_folder(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def remove_adapters(index_folder: str | Path, model_id: str | None = None) -> list[StoredAdapter]:
    """Drop the index's adapter for `model_id` (by its key; None: every adapter). -> those dropped."""
    dropped = []
    for adapter in stored_adapters(index_folder):
        if model_id is None or adapter.folder.name == model_key(model_id) or adapter.base_model == model_id:
            gone = adapter.folder.parent / f".{adapter.folder.name}.old-{os.getpid()}"
            os.replace(adapter.folder, gone)  # out of use at once, then deleted
            shutil.rmtree(gone, ignore_errors=True)
            dropped.append(adapter)
    return dropped
