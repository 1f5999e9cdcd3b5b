"""Read and replace activations of any transformers causal LM through hooks on its own modules.

Nothing here reimplements a model: every function registers hooks on the plain modules that
:func:`saekit.sources.sites.site_module` names, runs the model's own ``forward`` and removes the hooks
before returning (also when the pass fails).

* :func:`collect_activations` runs one forward pass for any number of sites and stops it right after
  the last site it needs has been computed, so a pass that needs only early layers costs only them.
* :func:`collect_activations_and_grads` also returns d(next-token loss)/d(activation) at every site.
* :func:`splice`, :func:`splice_from`, :func:`splice_sae`, :func:`splice_transcoder` and
  :func:`add_vector` are context managers that replace a site's tensor while the ``with`` block runs;
  they nest and combine freely.

Activations come back detached, in the model's dtype and on its device, as ``[batch, positions, d]``
tensors. They share memory with the model's own intermediate tensors, which transformers never
modifies in place, so no copy is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from saekit.errors import ConfigError, DataError
from saekit.models.load import LoadedModel, as_module
from saekit.sae.base import SAE
from saekit.sources.sites import resolve_sites, site_module

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ActsAndGrads(NamedTuple):
    """Result of :func:`collect_activations_and_grads`.

    acts:  site -> [batch, positions, d] activations (detached).
    grads: site -> [batch, positions, d] gradient of ``loss`` with respect to that activation.
    loss:  the scalar next-token cross-entropy the gradients are of (detached).
    """

    acts: dict[str, Tensor]
    grads: dict[str, Tensor]
    loss: Tensor


class _StopForward(Exception):
    """Raised by a hook once every requested site is captured, to skip the rest of the model."""


def collect_activations(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    sites: str | Iterable[str],
    *,
    attention_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Activations at ``sites`` for ``tokens`` [batch, positions], from one forward pass without grads.

    ``sites`` may hold patterns (``layers.*.resid_post``); the result has one entry per resolved site, in
    the order of :func:`resolve_sites`. Splices active around the call are applied, and their results are
    what is captured at their own sites.
    """
    model = as_module(model)
    names = resolve_sites(model, sites)
    tokens, attention_mask = _check_tokens(model, tokens, attention_mask)
    with torch.no_grad(), _capturing(model, names, stop_early=True) as captured:
        try:
            model(input_ids=tokens, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        _check_all_ran(names, captured)
        return {name: captured[name].detach() for name in names}

@torch.no_grad()
def site_rows(
    model: nn.Module | LoadedModel, tokens: Tensor, sites: Sequence[str], *, skip_positions: int = 1, batch_size: int = 8, progress: bool = True
) -> dict[str, Tensor]:
    """site -> [contexts · (T − skip_positions), d] float32 CPU activations of ``tokens [contexts, T]``,
    context-major, the first ``skip_positions`` positions (BOS) of each context left out: one forward
    pass per ``batch_size`` contexts for all sites, each batch copied into its slice of the result (the
    rows are never held twice). A site named twice is read once."""
    model = as_module(model)
    per = tokens.shape[1] - skip_positions
    out: dict[str, Tensor] = {}
    wanted = list(dict.fromkeys(sites))
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="activations", disable=not progress, leave=False):
        part = tokens[start : start + batch_size]
        for site, a in collect_activations(model, part, wanted).items():
            if site not in out:
                out[site] = torch.empty(tokens.shape[0] * per, a.shape[-1], dtype=torch.float32)
            out[site][start * per : (start + part.shape[0]) * per] = a[:, skip_positions:].reshape(-1, a.shape[-1])
    return out



def collect_activations_and_grads(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    sites: str | Iterable[str],
    *,
    attention_mask: Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> ActsAndGrads:
    """Activations at ``sites`` and the gradient of the next-token loss with respect to each: the loss
    averaged over the predictions, or with ``reduction="sum"`` summed, whose gradient at a token does not
    depend on how many contexts share the batch (what gradient-aware SAEs read).

    Runs the whole model (the loss needs the logits) and one backward pass restricted to the sites, so
    parameters' ``.grad`` are left untouched. Works whether or not the parameters require grad. Under a
    splice, the activation and gradient are those of the spliced tensor.
    """
    model = as_module(model)
    names = resolve_sites(model, sites)
    tokens, attention_mask = _check_tokens(model, tokens, attention_mask)
    if tokens.shape[1] < 2:
        raise DataError(f"the next-token loss needs at least 2 positions, got tokens of shape {tuple(tokens.shape)}")
    with torch.enable_grad(), _capturing(model, names, stop_early=False) as captured:
        logits = model(input_ids=tokens, attention_mask=attention_mask, use_cache=False).logits
        _check_all_ran(names, captured)
        loss = next_token_loss(logits, tokens, attention_mask, reduction=reduction)
        acts = [captured[name] for name in names]
        # a site the loss does not depend on (allow_unused) has a zero gradient
        grads = torch.autograd.grad(loss, acts, allow_unused=True)
    return ActsAndGrads(
        acts={name: act.detach() for name, act in zip(names, acts)},
        grads={name: torch.zeros_like(act) if g is None else g for name, act, g in zip(names, acts, grads)},
        loss=loss.detach(),
    )


def next_token_loss(
    logits: Tensor, tokens: Tensor, attention_mask: Tensor | None = None, *, reduction: Literal["mean", "sum"] = "mean"
) -> Tensor:
    """Cross-entropy of predicting ``tokens[:, t + 1]`` from ``logits[:, t]``, averaged (or summed) over
    the predictions, in float32 or wider.

    With an ``attention_mask``, only pairs whose two positions are both real tokens count.
    """
    logits = logits[:, :-1].flatten(0, 1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 / fp16 logits lose too much
    losses = F.cross_entropy(logits, tokens[:, 1:].flatten(), reduction="none")
    if attention_mask is not None:
        losses = losses[(attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()).flatten()]
    return losses.sum() if reduction == "sum" else losses.mean()


@contextmanager
def splice(model: nn.Module | LoadedModel, site: str, fn: Callable[[Tensor], Tensor], *, start: int = 0) -> Iterator[None]:
    """Replace the tensor ``h`` at ``site`` by ``fn(h)`` (cast to ``h``'s dtype) while the block runs;
    with ``start``, only positions ``>= start`` are replaced, by ``fn(h[:, start:])``, and the earlier
    ones (BOS and the other positions an SAE was not trained on) stay as the model computes them.

    What is replaced is the site's tensor as defined in :mod:`saekit.sources.sites`: for ``resid_pre``
    the block's input, for ``resid_post`` its output, for ``attn_out`` / ``mlp_out`` the sublayer's
    contribution to the residual stream (the rest of the block is untouched: the MLP of a sequential
    block then reads ``resid_pre + fn(attn_out)``). ``fn`` must keep the shape ``[batch, positions, d]``.

    Gradients flow through ``fn`` as through any module. The splice's hook runs before other hooks on
    the same module (transformers' ``output_hidden_states`` capture included), so they all see the
    replacement; hence when two splices are nested on one site, the inner one runs first and the outer
    one receives its result.
    """
    model = as_module(model)
    hook = site_module(model, site)

    def replace(h: Tensor) -> Tensor:
        kept = h[:, start:] if start else h
        new = fn(kept)
        if not isinstance(new, Tensor) or new.shape != kept.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise DataError(f"splice at {site!r} must return a tensor of shape {tuple(kept.shape)}, got {got}")
        new = new.to(h.device, h.dtype)
        return torch.cat([h[:, :start], new], dim=1) if start else new

    with _removing([hook.attach(replace, prepend=True)]):
        yield


@contextmanager
def splice_from(
    model: nn.Module | LoadedModel, source_site: str, site: str, fn: Callable[[Tensor], Tensor], *, start: int = 0
) -> Iterator[None]:
    """Replace the tensor at ``site`` by ``fn(h_source)``, where ``h_source`` is the tensor at
    ``source_site`` computed earlier in the same forward pass: what a transcoder does (read
    ``layers.i.mlp_in``, write ``layers.i.mlp_out``). With ``start``, ``fn`` gets and replaces positions
    ``>= start`` only, as in :func:`splice`; ``fn`` returns ``site``'s shape. A ``source_site`` that the
    pass has not computed when it reaches ``site`` is a ConfigError naming both."""
    model = as_module(model)
    seen: dict[str, Tensor] = {}

    def from_source(h: Tensor) -> Tensor:
        if source_site not in seen:
            raise ConfigError(
                f"splice at {site!r} reads {source_site!r}, which the forward pass has not computed by then; "
                "the site read must come before the site written"
            )
        x = seen.pop(source_site)  # popped: a later pass must compute its own
        return fn(x[:, start:] if start else x)

    with record(model, [source_site], seen), splice(model, site, from_source, start=start):
        yield


@contextmanager
def record(model: nn.Module | LoadedModel, sites: Iterable[str], into: dict[str, Tensor]) -> Iterator[None]:
    """While the block runs, store in ``into`` the tensor of each of ``sites`` (all positions) at every
    forward pass, as the model computes it (with its graph, under any splice): what an objective that
    runs the model reads downstream of a splice. The last pass of the block wins."""
    model = as_module(model)

    def reader(name: str) -> Callable[[Tensor], None]:
        def read(h: Tensor) -> None:
            into[name] = h

        return read

    with _removing([site_module(model, name).attach(reader(name)) for name in sites]):
        yield


def splice_sae(model: nn.Module | LoadedModel, site: str, sae: SAE) -> AbstractContextManager[None]:
    """Replace the activation at ``site`` by the SAE's reconstruction ``sae(h)`` (see :func:`splice`);
    a transcoder goes through :func:`splice_transcoder`."""
    if sae.transcoder:
        raise DataError(f"a {sae.architecture} transcoder writes another site than it reads: splice it with splice_transcoder")
    return splice(model, site, _rows_through(sae, f"splice {site!r}"))


def splice_transcoder(model: nn.Module | LoadedModel, sae: SAE, *, start: int = 0) -> AbstractContextManager[None]:
    """Replace the activation at the transcoder's output site (``sae.site_out``, e.g. an MLP's output) by
    its output ``sae(x)`` from the activation ``x`` at its input site (``sae.site``) in the same forward
    pass (:func:`splice_from`): the model runs with that sublayer replaced by the transcoder."""
    read = sae.require_site()
    return splice_from(model, read, sae.require_site_out(), _rows_through(sae, f"read {read!r}"), start=start)


def _rows_through(sae: SAE, what: str) -> Callable[[Tensor], Tensor]:
    """``h [..., d_in]`` -> ``sae(h)`` [..., d_out], computed on rows in the SAE's dtype; ``what`` names the
    use in the error of an activation of the wrong width."""

    def reconstruct(h: Tensor) -> Tensor:
        if h.shape[-1] != sae.d_in:
            raise DataError(f"SAE with d_in={sae.d_in} cannot {what}, whose width is {h.shape[-1]}")
        rows = h.reshape(-1, h.shape[-1]).to(sae.W_dec.dtype)
        return sae(rows).reshape(*h.shape[:-1], sae.d_out)

    return reconstruct


def add_vector(model: nn.Module | LoadedModel, site: str, vector: Tensor, scale: float = 1.0) -> AbstractContextManager[None]:
    """Add ``scale * vector`` to the activation at ``site`` at every position (steering; see :func:`splice`).

    ``vector`` is ``[d]``, or any shape that broadcasts to ``[batch, positions, d]`` (e.g. per position).
    """
    model = as_module(model)

    def steer(h: Tensor) -> Tensor:
        try:
            fits = torch.broadcast_shapes(vector.shape, h.shape) == h.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise DataError(f"steering vector of shape {tuple(vector.shape)} does not fit {site!r} of shape {tuple(h.shape)}")
        return h + scale * vector.to(device=h.device, dtype=h.dtype)

    return splice(model, site, steer)


@contextmanager
def _capturing(model: nn.Module, names: list[str], *, stop_early: bool) -> Iterator[dict[str, Tensor]]:
    """Hooks that store each site's tensor in the yielded dict during the forward passes in the block.

    With ``stop_early`` the hook that completes the dict raises :class:`_StopForward`. Without it (the
    gradient pass), a tensor that does not require grad is swapped for a leaf that does: it has no graph
    upstream anyway, and the swap puts everything downstream of it on the graph, so that its gradient
    exists even when the parameters are frozen.
    """
    captured: dict[str, Tensor] = {}

    def reader(name: str) -> Callable[[Tensor], Tensor | None]:
        def read(h: Tensor) -> Tensor | None:
            if name in captured:
                raise ConfigError(f"site {name!r} ran twice in one forward pass; pick a module that runs once")
            swapped = not stop_early and not h.requires_grad
            if swapped:
                h = h.detach().requires_grad_()
            captured[name] = h
            if stop_early and len(captured) == len(names):
                raise _StopForward
            return h if swapped else None

        return read

    handles: list[RemovableHandle] = []
    with _removing(handles):
        for name in names:
            handles.append(site_module(model, name).attach(reader(name)))
        yield captured


@contextmanager
def _removing(handles: list[RemovableHandle]) -> Iterator[None]:
    """Remove the hooks in ``handles`` (which may still grow inside the block) on the way out."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_all_ran(names: list[str], captured: dict[str, Tensor]) -> None:
    missing = [name for name in names if name not in captured]
    if missing:
        raise ConfigError(f"sites {missing} were never computed by the forward pass")


def _check_tokens(model: nn.Module, tokens: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Validate token ids [batch, positions] and move them (and the mask) to the embedding's device."""
    embedding = check_token_ids(model, tokens)
    if attention_mask is not None and attention_mask.shape != tokens.shape:
        raise DataError(f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens shape {tuple(tokens.shape)}")
    device = embedding.weight.device
    return tokens.to(device), None if attention_mask is None else attention_mask.to(device)


def check_token_ids(model: nn.Module, tokens: Tensor) -> nn.Embedding:
    """Refuse anything but integer token ids [batch, positions] within ``model``'s vocabulary; return its
    token embedding. Sources check their whole token set with it up front, so that a bad id is named
    before the first forward pass, not hours into a run."""
    if not isinstance(tokens, Tensor):
        raise DataError(f"tokens must be a tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise DataError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2 or tokens.numel() == 0:
        hint = " (use tokens[None] for a single sequence)" if tokens.ndim == 1 else ""
        raise DataError(f"tokens must be a non-empty [batch, positions] tensor, got shape {tuple(tokens.shape)}{hint}")
    embedding = cast("PreTrainedModel", model).get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise DataError(f"{type(model).__name__} has no token embedding to check the ids against")
    vocab = embedding.num_embeddings
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab:
        raise DataError(f"token ids must be in [0, {vocab}), got values in [{low}, {high}]")
    return embedding
