"""Publishing a saved SAE folder or suite to a Hugging Face Hub repository, with a model card.

    push_to_hub("runs/smollm2/saes", "me/smollm2-saes")      # creates the repository if needed

One commit holds the folder's own files (cfg.json, sae_weights.safetensors, provenance.json, and
index.json for a suite; nothing else in the folder) and a README.md model card generated from them:
architecture, sizes, site, model, training tokens and data, final metrics. The card is sent from
memory: nothing is written to the user's folder, nor copied. Every value the card shows from the
files is escaped (Markdown and HTML), and its YAML header is written by a YAML writer.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from saekit.bounded import file_problem
from saekit.errors import ArtifactError
from saekit.io.artifact import INDEX_FILE, load_sae, load_suite
from saekit.io.convert.common import read_json_object
from saekit.io.convert.native import CFG_FILE, PROVENANCE_FILE, WEIGHTS_FILE, is_sae_folder
from saekit.io.hub import REPO_ID, first_line, import_optional, network_errors
from saekit.version import __version__

CARD_FILE = "README.md"
METRICS_SHOWN = ("mse", "fvu", "explained_variance", "l0", "dead_fraction")


class Published(NamedTuple):
    """What :func:`push_to_hub` sent."""

    url: str
    """The commit's page on the Hub."""
    files: tuple[str, ...]
    """Paths in the repository, the model card included."""


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
) -> Published:
    """Upload the SAE folder or suite folder ``folder`` (as saved by saekit) to ``repo_id``, creating the
    repository when it does not exist, in one commit with a generated README.md model card.

    ``token`` defaults to huggingface_hub's (``HF_TOKEN`` or ``hf auth login``); ``endpoint`` to
    ``HF_ENDPOINT`` or huggingface.co. The folder is loaded first, so a folder saekit cannot read is
    refused before anything is sent.
    """
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ArtifactError(f"repository id {repo_id!r} must be owner/name (letters, digits, '.', '_', '-')")
    folder = Path(folder)
    files = files_to_publish(folder)
    card = model_card(folder, repo_id)
    hf = import_optional("huggingface_hub", "huggingface_hub")
    api = hf.HfApi(endpoint=endpoint, token=token, library_name="saekit", library_version=__version__)
    operations = [hf.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations.append(hf.CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=f"Upload SAEs with saekit {__version__}", revision=revision)
    except network_errors() as exc:
        raise ArtifactError(f"cannot publish {folder} to {repo_id}: {type(exc).__name__}: {first_line(exc)}") from None
    return Published(str(commit.commit_url), (*files, CARD_FILE))


def files_to_publish(folder: Path) -> tuple[str, ...]:
    """The files of ``folder`` that make the SAE or suite, '/'-separated, after loading it: an SAE
    folder's cfg.json, weights and provenance, or a suite's index.json and its members' files. Each
    must be a regular file inside the folder (a symbolic link could send a file from elsewhere)."""
    if (folder / INDEX_FILE).is_file():
        members = list(load_suite(folder))
        names = [INDEX_FILE, *(f"{m}/{f}" for m in members for f in _sae_files(folder / m))]
    elif is_sae_folder(folder):
        load_sae(folder)
        names = list(_sae_files(folder))
    else:
        raise ArtifactError(
            f"{folder} is neither an SAE folder ({CFG_FILE} + {WEIGHTS_FILE}) nor a suite ({INDEX_FILE}): nothing to "
            "publish (an SAE of another library's layout is written as one by `saekit convert`)"
        )
    for name in names:
        path = folder / name
        if path.is_symlink() or (problem := file_problem(path)):
            raise ArtifactError(f"refusing to publish {path}: it {'is a symbolic link' if path.is_symlink() else problem}")
    return tuple(names)


def _sae_files(folder: Path) -> tuple[str, ...]:
    optional = (PROVENANCE_FILE,) if (folder / PROVENANCE_FILE).exists() or (folder / PROVENANCE_FILE).is_symlink() else ()
    return (CFG_FILE, WEIGHTS_FILE, *optional)


# ---------------------------------------------------------------------------------------------
# The model card


def model_card(folder: Path, repo_id: str) -> str:
    """README.md for ``folder``: a YAML header the Hub indexes, then what each SAE is and how it was
    trained, read from its cfg.json and provenance.json."""
    suite = (folder / INDEX_FILE).is_file()
    members = [str(e["name"]) for e in read_json_object(folder / INDEX_FILE)["saes"]] if suite else [""]
    rows = [_describe(folder / m if m else folder, m) for m in members]
    models = sorted({r["model"] for r in rows if r["model"]})
    header = {"library_name": "saekit", "tags": ["saekit", "sparse-autoencoder", "interpretability"]}
    if len(models) == 1 and REPO_ID.fullmatch(models[0]):
        header["base_model"] = models[0]
    load = f'saekit.load_suite("hf://{repo_id}")' if suite else f'saekit.load_sae("hf://{repo_id}")'
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {_md(repo_id)}", "",
        f"{'A suite of ' + str(len(rows)) + ' sparse autoencoders' if suite else 'A sparse autoencoder'} trained with "
        f"[saekit](https://pypi.org/project/saekit/) {_md(__version__)}. Each folder is in SAELens's layout "
        "(`cfg.json` + `sae_weights.safetensors`), with `provenance.json` recording how it was made.", "",
        "```python", "import saekit", f"saes = {load}", "```", "",
        "## SAEs", "",
        *_table(rows, ["name", "architecture", "d_in", "d_sae", "hparams", "model", "site"]), "",
        "## Training", "",
        *_table(rows, ["name", "tokens", "data", *METRICS_SHOWN]), "",
        "Metrics are the last values logged in training, on its own batches (`provenance.json`, `final_metrics`).",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _describe(folder: Path, name: str) -> dict[str, Any]:
    cfg = read_json_object(folder / CFG_FILE)
    prov = read_json_object(folder / PROVENANCE_FILE) if (folder / PROVENANCE_FILE).exists() else {}
    block, meta = _object(cfg, "saekit"), _object(cfg, "metadata")
    config, metrics = _object(block, "config"), _object(prov, "final_metrics")
    hparams = {k: v for k, v in config.items() if k not in ("d_in", "d_sae") and isinstance(v, (int, float, str, bool))}
    return {
        "name": name or ".",
        "architecture": block.get("architecture") or cfg.get("architecture"),
        "d_in": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"),
        "hparams": ", ".join(f"{k}={v}" for k, v in sorted(hparams.items())),
        "model": meta.get("model_name") if isinstance(meta.get("model_name"), str) else None,
        "site": meta.get("hook_name"),
        "tokens": prov.get("tokens"),
        "data": _data_of(prov.get("data")),
        **{k: metrics.get(k) for k in METRICS_SHOWN},
    }


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _data_of(data: Any) -> str | None:
    if not isinstance(data, Mapping):
        return None
    keys = ("kind", "model", "corpus", "split", "context", "n_seqs", "rows")
    return ", ".join(f"{k}={data[k]}" for k in keys if isinstance(data.get(k), (str, int, float))) or None


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return _md(str(value))


def _md(text: str) -> str:
    """``text`` shown literally in Markdown: HTML escaped, Markdown's punctuation backslashed, one line."""
    text = html.escape(re.sub(r"\s+", " ", text).strip()[:200])
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~])", r"\\\1", text)
