"""``load_model``: the embedded SmolLM2 (converted once, then cached), a local model folder, or a hub id.

Cache layout: ``<cache>/<name>/`` is a plain Hugging Face folder (config.json, model.safetensors,
tokenizer files). ``<cache>`` is ``cache_dir`` when given, else ``$SAEKIT_CACHE/models``, else
``${XDG_CACHE_HOME:-~/.cache}/saekit/models``. A conversion writes into a hidden temporary sibling
that is renamed into place (:func:`saekit.atomic.create_folder`), so a folder named ``<name>`` is always
complete, and when several processes convert at once the first to finish wins and the others use its
folder; a conversion killed outright leaves at most a hidden ``.<name>.*.tmp`` folder, which is safe
to delete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from saekit.atomic import create_folder
from saekit.devices import as_dtype, resolve_device
from saekit.errors import ArtifactError, ConfigError, DataError
from saekit.models import smollm2
from saekit.paths import cache_root

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"

EMBEDDED_MODELS: dict[str, Callable[[Path], None]] = {"smollm2-135m": smollm2.convert}
"""Names that need no download: each maps to a function writing the model folder into a given path."""


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    """The causal LM, in eval mode, on the requested device and dtype."""
    tokenizer: PreTrainedTokenizerBase
    """Its tokenizer; it has a pad token whenever the model has an EOS token."""
    name: str
    """The name or path it was loaded from."""

    @property
    def bos_token_id(self) -> int | None:
        """The token to put before every context (SmolLM2: ``<|im_start|>`` = 1); None if the tokenizer has none."""
        bos = self.tokenizer.bos_token_id
        return bos if isinstance(bos, int) else None


def as_module(model: nn.Module | LoadedModel) -> nn.Module:
    """The torch module behind ``model``: ``model.model`` for a :class:`LoadedModel`, the module itself
    otherwise. Every public function that takes a model calls this first."""
    if isinstance(model, LoadedModel):
        return model.model
    if isinstance(model, nn.Module):
        return model
    raise DataError(
        f"model must be a torch module (e.g. a Hugging Face causal LM) or what saekit.load_model returns, "
        f"got {type(model).__name__}"
    )


def default_cache_dir() -> Path:
    """Folder that holds converted embedded models (see the module docstring for the precedence)."""
    return cache_root() / "models"


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | str = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``name_or_path`` is an embedded name (``"smollm2-135m"``, converted into the cache on first use),
    else a Hub reference ``hf://owner/repo[/folder][@revision]`` (a training checkpoint such as Pythia's
    ``@step1000``; read from huggingface_hub's cache, offline too: :mod:`saekit.io.hub`), else an existing
    local folder, else passed to ``from_pretrained`` as a hub id (which works only
    with network access). An embedded name wins over a same-named folder in the working directory;
    write ``./smollm2-135m`` to mean the folder. ``device`` may be "auto" (CUDA when available), or None
    to leave the model where ``from_pretrained`` puts it (the CPU); ``dtype`` may be a name such as
    "bfloat16" (:mod:`saekit.devices`).
    """
    device = None if device is None else resolve_device(device)
    dtype = as_dtype(dtype)
    name = os.fspath(name_or_path)
    from saekit.io.hub import is_remote, local_path  # imports only saekit.errors; huggingface_hub when used

    if is_remote(name):  # a revision of a Hub repository, through huggingface_hub's cache
        return _from_pretrained(_model_folder(local_path(name), name), name, device, dtype)
    if name.lower() in EMBEDDED_MODELS:
        key = name.lower()
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return _from_pretrained(_cached(key, folder / key), key, device, dtype)
    path = Path(name).expanduser()
    if path.exists():
        return _from_pretrained(_model_folder(path, name), name, device, dtype)
    if _looks_like_path(name):
        raise ConfigError(f"model folder {name} does not exist")
    return _from_pretrained(name, name, device, dtype)


def _model_folder(path: Path, name: str) -> Path:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ArtifactError(f"{name} is not a model folder (it has no config.json)")
    return path


def _looks_like_path(name: str) -> bool:
    """Whether a missing ``name`` was meant as a folder rather than a hub id ("org/model" or "model")."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _cached(key: str, folder: Path) -> Path:
    """``folder``, converting the embedded model ``key`` into it first if it is not there yet."""
    if (folder / "config.json").is_file():
        return folder
    # Our conversions appear only complete, so a folder without config.json is not ours: do not guess
    # what it is. Another process that finished the same conversion first left a folder as good as ours.
    if not create_folder(folder, EMBEDDED_MODELS[key]) and not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder} exists but holds no complete model (no config.json); delete it to convert again")
    return folder


def _from_pretrained(source: str | Path, name: str, device: torch.device | None, dtype: torch.dtype) -> LoadedModel:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
    except ImportError as exc:
        raise ConfigError("loading a language model needs transformers: pip install transformers") from exc
    from safetensors import SafetensorError

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = cast(PreTrainedModel, AutoModelForCausalLM.from_pretrained(source, dtype=dtype))
    # What transformers raises for a folder it cannot use: missing or unreadable files (OSError), an
    # unknown model type or bad config values (ValueError, KeyError), weights of the wrong shape
    # (RuntimeError), a truncated safetensors file (SafetensorError).
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        where = "folder" if isinstance(source, Path) else "hub id (needs network access unless already in the HF cache)"
        raise ArtifactError(f"could not load model {name!r} as a {where}: {exc}") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Batches of unequal length need some pad id; padded positions are masked, so EOS is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)  # pyright: ignore[reportArgumentType]  (transformers types .to as its generate mixin's)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, name=name)
