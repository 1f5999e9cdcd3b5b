"""SAEs on the Hugging Face Hub, and in SAELens's registry of pretrained SAEs, read as local folders.

    hf://owner/repo                      the whole repository, default branch
    hf://owner/repo/layer_3/topk@v1.0    the folder layer_3/topk of the revision (branch, tag or commit) v1.0
    saelens://RELEASE/SAE_ID             a release/id of SAELens's registry (needs the sae-lens package),
                                         which names a repository and a folder in it

A reference is downloaded with ``huggingface_hub.snapshot_download``, restricted to the folder it names,
into huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``), and honours its offline mode
(``HF_HUB_OFFLINE=1``: the cache only). The folder it gives is then read like any local folder, in any
layout :mod:`saekit.io.convert` knows, so ``saekit.load_sae``, ``saekit.load_suite`` and
``saekit.io.convert.read_any`` take such references wherever they take a path.

huggingface_hub and sae-lens are imported only when a reference is resolved.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from saekit.errors import ArtifactError, ConfigError

HF_SCHEME = "hf://"
SAELENS_SCHEME = "saelens://"

SAELENS_CONVERTERS_READ = (None, "gemma_2", "dictionary_learning_1")
"""The ``conversion_func`` values of SAELens's registry whose files are in a layout saekit.io.convert
reads: none (SAELens's own), Gemma Scope's params.npz, dictionary_learning's ae.pt."""

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


class HubRef(NamedTuple):
    """A folder of a Hub repository at a revision."""

    repo_id: str
    subfolder: str
    """'/'-separated path inside the repository, "" for its root."""
    revision: str | None
    """Branch, tag or commit; None for the default branch."""

    def __str__(self) -> str:
        return HF_SCHEME + "/".join(p for p in (self.repo_id, self.subfolder) if p) + (f"@{self.revision}" if self.revision else "")


def is_remote(path: object) -> bool:
    """Whether ``path`` is an ``hf://`` or ``saelens://`` reference rather than a local path."""
    return isinstance(path, str) and path.startswith((HF_SCHEME, SAELENS_SCHEME))


def parse_ref(text: str) -> HubRef:
    """The repository, folder and revision of ``hf://owner/repo[/path][@revision]`` (or of a
    ``saelens://release/id``, looked up in SAELens's registry)."""
    if text.startswith(SAELENS_SCHEME):
        return saelens_ref(text)
    if not text.startswith(HF_SCHEME):
        raise ConfigError(f"{text!r} is not a Hub reference: write hf://owner/repo[/folder][@revision]")
    body, _, revision = text[len(HF_SCHEME) :].partition("@")
    parts = body.strip("/").split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ConfigError(f"{text!r}: the repository must be owner/name (letters, digits, '.', '_', '-'), got {repo_id!r}")
    if "@" in text and not (_REVISION.fullmatch(revision) and ".." not in revision):
        raise ConfigError(f"{text!r}: the revision after '@' must be a branch, tag or commit, got {revision!r}")
    return HubRef(repo_id, _checked_subfolder(subfolder, text), revision or None)


def _checked_subfolder(subfolder: str, where: str) -> str:
    path = PurePosixPath(subfolder)
    if subfolder and (path.is_absolute() or any(p in ("", ".", "..") for p in subfolder.split("/")) or "\\" in subfolder):
        raise ConfigError(f"{where}: the folder {subfolder!r} must be a plain path inside the repository (no '.', '..', '//' or backslash)")
    return subfolder


def local_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is local; the downloaded folder when it is a Hub or SAELens reference."""
    return download(parse_ref(path)) if isinstance(path, str) and is_remote(path) else Path(path)


def download(ref: HubRef, *, cache_dir: str | os.PathLike[str] | None = None, token: str | None = None, local_files_only: bool = False) -> Path:
    """The local folder holding ``ref``: its files are fetched into huggingface_hub's cache (only those
    below ``ref.subfolder``), or found there when offline (``HF_HUB_OFFLINE=1`` or ``local_files_only``).

    Raises ArtifactError naming the reference when the repository, revision or folder cannot be had,
    and saying how to fetch it when the cache lacks it offline.
    """
    hf = import_optional("huggingface_hub", "huggingface_hub")
    from huggingface_hub import constants, errors

    patterns = [f"{ref.subfolder}/*"] if ref.subfolder else None
    # huggingface_hub 1.x also says when a cached snapshot lacks files it knows the repository has.
    not_cached = tuple(e for e in (errors.LocalEntryNotFoundError, getattr(errors, "IncompleteSnapshotError", None)) if e is not None)
    try:
        snapshot = hf.snapshot_download(
            ref.repo_id, revision=ref.revision, cache_dir=cache_dir, token=token, allow_patterns=patterns,
            local_files_only=local_files_only, library_name="saekit",
        )  # fmt: skip
    except not_cached:
        include = f" --include '{ref.subfolder}/*'" if ref.subfolder else ""
        at = f" --revision {ref.revision}" if ref.revision else ""
        raise ArtifactError(
            f"{ref} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and downloads are off "
            f"(HF_HUB_OFFLINE=1 or offline): fetch it once online with `saekit hub pull {ref} FOLDER`, or "
            f"`hf download {ref.repo_id}{include}{at}`"
        ) from None
    except errors.GatedRepoError:
        raise ArtifactError(f"{ref}: {ref.repo_id} is gated: accept its terms on the Hub and log in with `hf auth login`") from None
    except errors.RepositoryNotFoundError:
        raise ArtifactError(f"{ref}: no repository {ref.repo_id!r} on the Hub (or it is private: log in with `hf auth login`)") from None
    except errors.RevisionNotFoundError:
        raise ArtifactError(f"{ref}: {ref.repo_id} has no revision {ref.revision!r}") from None
    except network_errors() as exc:
        raise ArtifactError(f"cannot download {ref}: {type(exc).__name__}: {first_line(exc)}") from None
    folder = Path(snapshot).joinpath(*ref.subfolder.split("/")) if ref.subfolder else Path(snapshot)
    if not folder.is_dir():
        raise ArtifactError(f"{ref}: {ref.repo_id} has no folder {ref.subfolder!r} at {ref.revision or 'its default branch'}")
    return folder


def saelens_ref(text: str) -> HubRef:
    """The Hub folder of ``saelens://RELEASE/SAE_ID`` in SAELens's registry of pretrained SAEs."""
    release, _, sae_id = text[len(SAELENS_SCHEME) :].partition("/")
    if not release or not sae_id:
        raise ConfigError(f"{text!r}: write saelens://RELEASE/SAE_ID, e.g. saelens://gpt2-small-res-jb/blocks.8.hook_resid_pre")
    import_optional("sae_lens", "sae-lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # pyright: ignore[reportMissingImports]

    directory = get_pretrained_saes_directory()
    if release not in directory:
        near = ", ".join(sorted(r for r in directory if r.split("-")[0] == release.split("-")[0])[:8]) or "none alike"
        raise ConfigError(f"{text!r}: SAELens's registry has no release {release!r} (releases alike: {near})")
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        ids = ", ".join(list(lookup.saes_map)[:8]) + (", ..." if len(lookup.saes_map) > 8 else "")
        raise ConfigError(f"{text!r}: release {release!r} has no SAE {sae_id!r} (it has {ids})")
    if lookup.conversion_func not in SAELENS_CONVERTERS_READ:
        raise ArtifactError(
            f"{text!r}: SAELens reads this release with its {lookup.conversion_func!r} converter, a layout saekit has "
            f"no reader for (it reads releases in SAELens's own layout, Gemma Scope's and dictionary_learning's)"
        )
    # Settings SAELens applies on top of the files, which a folder read alone would silently drop
    # (dataset_path only says what it was trained on).
    overrides = sorted(set(lookup.config_overrides or {}) - {"dataset_path"})
    if sae_id in (lookup.norm_scaling_factor or {}):
        overrides.append("norm_scaling_factor")
    if overrides:
        raise ArtifactError(
            f"{text!r}: SAELens's registry changes this SAE at load time ({', '.join(overrides)}), which saekit "
            "does not reproduce from the files; load it with SAELens itself"
        )
    return HubRef(lookup.repo_id, _checked_subfolder(lookup.saes_map[sae_id].strip("/"), text), None)


def import_optional(module: str, package: str):  # noqa: ANN202 - a module
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this needs the {package} package, which is not installed: pip install {package}") from None


def network_errors() -> tuple[type[BaseException], ...]:
    """What a call to the Hub raises when the Hub refuses it or cannot be reached: huggingface_hub's
    errors, and its HTTP library's (httpx2 in huggingface_hub 1.x and later, httpx or requests before)."""
    import importlib

    from huggingface_hub import errors

    found: list[type[BaseException]] = [errors.HfHubHTTPError, errors.HFValidationError, OSError, ValueError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return tuple(found)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
