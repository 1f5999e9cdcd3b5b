"""Explanations of latents and their scores (``saekit interpret``), as the latent pages show them.

One JSON file beside each SAE, ``<sae>/explanations.json``, written by :mod:`saekit.interpret` and
read here, so that the browser needs nothing from the interpreter:

    {"format": 1, "prompts_version": "...", "model": "...", "endpoint": "http://...",
     "latents": {"12": {"explanation": "...", "detection": SCORES, "fuzzing": SCORES}, ...},
     "failed": {"13": "why", ...}}

where SCORES is ``{"n": 20, "failed": 0, "accuracy": 0.9, "balanced_accuracy": 0.9, "precision": 1.0,
"recall": 0.8, "f1": 0.89}`` (a ratio is null where it is undefined: no items, or no positive
prediction) or null when the latent had no contexts to score on. The file can come from elsewhere
(inside a downloaded SAE), so :func:`read_explanations` checks every key and type and refuses a
latent id outside the SAE with an ArtifactError naming the file; escaping is the pages' job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saekit.bounded import read_json
from saekit.browser.meta import MAX_JSON_BYTES
from saekit.errors import ArtifactError, ConfigError
from saekit.strict import from_dict

FILE = "explanations.json"
FORMAT = 1


@dataclass(frozen=True)
class Scores:
    """A classification score over the items of one scorer (detection or fuzzing) of one latent."""

    n: int
    """Items the model answered (in a valid format)."""
    failed: int
    """Items without a usable answer (the endpoint's answer was malformed or did not follow the format)."""
    accuracy: float | None
    balanced_accuracy: float | None
    """Mean of the recall of the positive and of the negative items (0.5: chance, whatever the mix)."""
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class LatentExplanation:
    explanation: str
    detection: Scores | None
    """Held-out activating vs non-activating contexts, classified given the explanation."""
    fuzzing: Scores | None
    """Activating contexts with their activating tokens marked correctly vs at random."""


@dataclass(frozen=True)
class Explanations:
    """The contents of one ``explanations.json``."""

    prompts_version: str
    model: str
    endpoint: str
    latents: dict[int, LatentExplanation] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    """Latents whose explanation could not be made, with why; a resumed run tries them again."""


def explanations_text(data: Explanations) -> str:
    body = asdict(data)
    body["latents"] = {str(k): v for k, v in sorted(body["latents"].items())}
    body["failed"] = {str(k): v for k, v in sorted(body["failed"].items())}
    return json.dumps({"format": FORMAT, **body}, indent=1, allow_nan=False) + "\n"


def read_explanations(folder: Path, d_sae: int | None = None) -> Explanations | None:
    """The checked ``explanations.json`` of the SAE in ``folder``; None when there is none. With
    ``d_sae``, a latent id outside ``0..d_sae-1`` is refused."""
    path = folder / FILE
    if not path.exists():
        return None
    raw = read_json(path, MAX_JSON_BYTES, ArtifactError, allow_nan=False)
    try:
        return _parse(raw, d_sae)
    except ConfigError as exc:
        raise ArtifactError(f"{path} is not a saekit explanations file: {exc}") from exc


def _parse(raw: Any, d_sae: int | None) -> Explanations:
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object, found {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise ConfigError(f"format is {raw.get('format')!r}, this saekit reads format {FORMAT}")
    body = {k: v for k, v in raw.items() if k != "format"}
    latents = _by_latent(body.get("latents", {}), "latents", d_sae)
    failed = _by_latent(body.get("failed", {}), "failed", d_sae)
    parsed = {i: _latent(v, f"latents.{i}") for i, v in latents.items()}
    for i, why in failed.items():
        if not isinstance(why, str):
            raise ConfigError(f"failed.{i}: expected a string, got {type(why).__name__}")
    return from_dict(Explanations, {**body, "latents": parsed, "failed": failed}, where="explanations")


def _by_latent(raw: Any, key: str, d_sae: int | None) -> dict[int, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected an object, got {type(raw).__name__}")
    out = {}
    for k, v in raw.items():
        if not (k.isascii() and k.isdigit()) or (d_sae is not None and int(k) >= d_sae):
            raise ConfigError(f"{key}[{k[:40]!r}]: not a latent id of this SAE" + (f" (0..{d_sae - 1})" if d_sae else ""))
        out[int(k)] = v
    return out


def _latent(raw: Any, where: str) -> LatentExplanation:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    body = dict(raw)
    for scorer in ("detection", "fuzzing"):
        if body.get(scorer) is not None:
            body[scorer] = from_dict(Scores, body[scorer], where=f"{where}.{scorer}")
    return from_dict(LatentExplanation, body, where=where)
