"""Explain and score the latents of an SAE or a suite through a chat-completions endpoint, saving
each SAE's results in ``<sae>/explanations.json`` (:mod:`saekit.browser.explanations`).

    from saekit.interpret import EndpointConfig, interpret
    interpret("demo-output/saes", EndpointConfig("http://127.0.0.1:8080/v1", "qwen2.5-7b"), latents=range(100))

The contexts come from the feature browser's cache beside each SAE (computed first, with the given
:class:`~saekit.browser.build.BrowserConfig`, where there is none). A run is resumable: the file is
rewritten atomically every ``save_every`` latents and when the run stops for any reason, and latents
already explained are skipped; latents that failed are tried again. A file made with other prompts
(:data:`~saekit.interpret.prompts.PROMPTS_VERSION`) or another model is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from saekit.atomic import write_text
from saekit.browser.build import BrowserConfig, build_browser, sae_folders
from saekit.browser.explanations import FILE, Explanations, LatentExplanation, explanations_text, read_explanations
from saekit.browser.meta import read_meta
from saekit.browser.store import CACHE_DIR, SaeData, cached_key, load_data
from saekit.errors import ConfigError
from saekit.interpret.client import AnswerError, ChatClient, EndpointConfig
from saekit.interpret.contexts import ContextSettings, latent_contexts
from saekit.interpret.prompts import PROMPTS_VERSION, detection_messages, explain_messages, fuzzing_messages, read_explanation
from saekit.interpret.scoring import detection_items, fuzzing_items, score


@dataclass(frozen=True)
class InterpretSettings:
    contexts: ContextSettings = field(default_factory=ContextSettings)
    batch: int = 5
    """Contexts per detection or fuzzing question."""
    seed: int = 0
    """Seed of the order of the scored contexts and of fuzzing's random marks."""
    save_every: int = 10
    """Latents explained between two saves of the results file."""

    def __post_init__(self) -> None:
        if self.batch < 1 or self.save_every < 1:
            raise ConfigError(f"batch and save_every must be at least 1, got {self.batch} and {self.save_every}")


def interpret(
    target: str | os.PathLike[str],
    endpoint: EndpointConfig,
    *,
    latents: Iterable[int] | None = None,
    settings: InterpretSettings = InterpretSettings(),
    browser: BrowserConfig | None = None,
    progress: bool = True,
) -> dict[str, Explanations]:
    """Explain and score ``latents`` (default: all) of every SAE of ``target`` (an SAE or suite
    folder); returns each SAE's results, as saved. An :class:`~saekit.errors.EndpointError` stops
    the run after saving what was done. ``browser``: the settings of a browser cache computed for an
    SAE that has none (default :class:`BrowserConfig`'s); an existing cache is used whatever made it."""
    client = ChatClient(endpoint)
    folders = sae_folders(target)
    wanted = None if latents is None else sorted(set(latents))  # an iterator is read once, for every SAE
    chosen = {name: _prepare(name, folder, wanted, endpoint, browser or BrowserConfig(), progress) for name, folder in folders.items()}
    return {name: _interpret_sae(name, folder, chosen[name], client, settings, progress) for name, folder in folders.items()}


def _prepare(
    name: str, folder: Path, latents: list[int] | None, endpoint: EndpointConfig, cfg: BrowserConfig, progress: bool
) -> list[int]:
    """The latents of the SAE in ``folder`` to interpret, once its browser cache is there (computed
    where there is none; an existing one is used whatever settings made it) and its results file
    fits ``endpoint``: every SAE of a suite is checked before the first request."""
    if cached_key(folder) is None:
        build_browser(folder, cfg, progress=progress)
    d_sae = read_meta(folder / CACHE_DIR / "meta.json").info.d_sae
    _start(folder, d_sae, endpoint)
    chosen = list(range(d_sae)) if latents is None else latents
    outside = [i for i in chosen if not 0 <= i < d_sae]
    if outside:
        raise ConfigError(f"latent(s) {', '.join(map(str, outside[:5]))} outside SAE {name}'s 0..{d_sae - 1}")
    return chosen


def _start(folder: Path, d_sae: int | None, endpoint: EndpointConfig) -> Explanations:
    """The results so far in ``folder``, or an empty record; refused when made with other prompts or model."""
    done = read_explanations(folder, d_sae)
    if done is None:
        return Explanations(PROMPTS_VERSION, endpoint.model, endpoint.base_url)
    if (done.prompts_version, done.model) != (PROMPTS_VERSION, endpoint.model):
        raise ConfigError(
            f"{folder / FILE} holds explanations by {done.model!r} with prompts {done.prompts_version!r}, not "
            f"{endpoint.model!r} with {PROMPTS_VERSION!r}; move it away to keep it, or use the same model"
        )
    return done


def _interpret_sae(
    name: str, folder: Path, chosen: list[int], client: ChatClient, settings: InterpretSettings, progress: bool
) -> Explanations:
    data = load_data(folder)
    record = _start(folder, data.info.d_sae, client.cfg)
    done, failed = dict(record.latents), dict(record.failed)
    todo = [i for i in chosen if i not in done]
    bar = tqdm(total=len(todo), desc=f"interpret {name}", disable=not progress)

    def save() -> Explanations:
        saved = dataclasses.replace(record, latents=done, failed=failed)
        write_text(folder / FILE, explanations_text(saved))
        return saved

    pool = ThreadPoolExecutor(max_workers=client.cfg.concurrency)
    try:
        futures = {pool.submit(_one_latent, client, data, i, settings): i for i in todo}
        pending, since_save = set(futures), 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            errors = [exc for future in finished if (exc := future.exception()) is not None]
            for future in finished:
                if future.exception() is None:
                    latent, outcome = futures[future], future.result()
                    if isinstance(outcome, str):
                        failed[latent] = outcome
                    else:
                        done[latent] = outcome
                        failed.pop(latent, None)
                    bar.update(1)
                    since_save += 1
            if errors:
                raise errors[0]  # an EndpointError: the run stops, after saving what is done (below)
            if since_save >= settings.save_every:
                save()
                since_save = 0
    except BaseException:
        client.stop()  # the other threads' retries end now instead of running their course
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        saved = save()
    if progress:
        print(f"interpret: {name}: {len(done)} latent(s) explained, {len(failed)} failed; {folder / FILE}")
    return saved


def _one_latent(client: ChatClient, data: SaeData, latent: int, settings: InterpretSettings) -> LatentExplanation | str:
    """The latent's explanation and scores, or why it has none."""
    contexts = latent_contexts(data, latent, settings.contexts)
    if not contexts.explain:
        return "never fired on the browser's sample"
    try:
        explanation = read_explanation(client.complete(explain_messages(contexts.explain)))
    except AnswerError as exc:
        return f"explanation: {exc}"
    rng = random.Random(f"{settings.seed}:{latent}")
    detection = score(detection_items(contexts), lambda texts: client.complete(detection_messages(explanation, texts)), settings.batch, rng)
    fuzzing = score(fuzzing_items(contexts, rng), lambda texts: client.complete(fuzzing_messages(explanation, texts)), settings.batch, rng)
    return LatentExplanation(explanation, detection, fuzzing)
