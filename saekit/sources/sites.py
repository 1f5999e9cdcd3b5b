"""Canonical site names and where they live in a Hugging Face causal LM.

A *site* is a place in the model whose activation an SAE reads or a splice replaces. Canonical names do
not depend on the model family:

* ``layers.{i}.resid_pre``:  the residual stream entering block ``i`` (the block's input);
* ``layers.{i}.resid_post``: the residual stream leaving block ``i`` (the block's output);
* ``layers.{i}.attn_out``:   what the attention sublayer of block ``i`` adds to the residual stream;
* ``layers.{i}.mlp_in``:     what the MLP of block ``i`` reads: the normalised residual stream, the
  input of its MLP module (a transcoder's input, with ``mlp_out`` its output);
* ``layers.{i}.mlp_out``:    what the MLP sublayer of block ``i`` adds to the residual stream.

So ``resid_post(i) == resid_pre(i) + attn_out(i) + mlp_out(i)`` for every family, sequential or
parallel residual. ``resid_post`` of the last block is taken *before* the final norm (transformers'
``output_hidden_states[-1]`` is taken after it).

Any other dotted module path (``model.layers.3.mlp.down_proj``) is also a site: its output (the first
element when the module returns a tuple) is the activation.

Where the sublayer sites live is data, one row per family in :data:`FAMILIES`. The residual sites only
need the list of blocks, so they also work for families not in the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from saekit.errors import ConfigError
from saekit.models.load import LoadedModel, as_module

KINDS = ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")
"""Canonical site kinds, in the order they are computed inside a block."""


@dataclass(frozen=True)
class Family:
    """Where one family of models keeps its blocks and its sublayer outputs.

    name:        short name used in messages.
    model_types: ``config.model_type`` values of the family.
    attn_out:    path, inside a block, of the module whose output is the attention contribution.
    mlp_out:     path, inside a block, of the module whose output is the MLP contribution.
    mlp_in:      path, inside a block, of the MLP module, whose first input is the MLP's input.
    """

    name: str
    model_types: frozenset[str]
    attn_out: str
    mlp_out: str
    mlp_in: str


FAMILIES: tuple[Family, ...] = (
    # Llama and its pre-norm relatives: residual + self_attn(norm(x)), then residual + mlp(norm(x)).
    # Their ``post_attention_layernorm`` is the *pre-MLP* norm despite its name, so it is no site; its
    # output is the MLP's input, mlp_in.
    Family("llama", frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma"}), "self_attn", "mlp", "mlp"),
    # Gemma 2 and 3 norm each sublayer's output before adding it, so the contribution is the norm's output.
    Family(
        "gemma2",
        frozenset({"gemma2", "gemma3", "gemma3_text"}),
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "mlp",  # its input is pre_feedforward_layernorm's output
    ),
    Family("gpt2", frozenset({"gpt2"}), "attn", "mlp", "mlp"),
    # GPT-NeoX adds the dropouts' outputs (identity in eval mode) in both its parallel and sequential
    # residual modes; its ``post_attention_layernorm`` is again the pre-MLP norm.
    Family("gpt_neox", frozenset({"gpt_neox"}), "post_attention_dropout", "post_mlp_dropout", "mlp"),
)

BLOCK_LISTS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "layers", "h")
"""Where causal LMs (and their base models) keep their blocks, tried in order."""

_CANONICAL = re.compile(r"layers\.(?P<index>\{[^}]*\}|[^.]+)\.(?P<kind>[^.]+)")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class SiteHook:
    """How to read or replace one site's tensor with hooks on a plain module.

    site:        the site name (canonical or a raw module path).
    path:        dotted path of ``module`` inside the model.
    module:      the module the hooks go on.
    reads_input: True when the site is the module's first input (``resid_pre``), False when it is the
                 module's output.
    index:       element of a tuple output that holds the site's tensor.
    """

    site: str
    path: str
    module: nn.Module = field(repr=False)
    reads_input: bool = False
    index: int = 0

    def attach(self, fn: Callable[[Tensor], Tensor | None], *, prepend: bool = False) -> RemovableHandle:
        """Call ``fn(h)`` on the site's tensor at every forward of ``module``; a returned tensor replaces ``h``.

        ``prepend`` puts the hook before hooks already on the module, so that they see the replacement.
        """
        if self.reads_input:

            def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
                if args:
                    new = fn(self._check(args[0]))
                    return None if new is None else ((new, *args[1:]), kwargs)
                if "hidden_states" in kwargs:
                    new = fn(self._check(kwargs["hidden_states"]))
                    return None if new is None else (args, {**kwargs, "hidden_states": new})
                raise ConfigError(f"site {self.site!r}: {self.path} was called without a hidden-states input")

            return self.module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=prepend)

        def hook(module: nn.Module, args: tuple, output: object) -> object:
            if isinstance(output, tuple):
                new = fn(self._check(output[self.index]))
                return None if new is None else (*output[: self.index], new, *output[self.index + 1 :])
            return fn(self._check(output))

        return self.module.register_forward_hook(hook, prepend=prepend)

    def _check(self, value: object) -> Tensor:
        if not isinstance(value, Tensor):
            where = "input" if self.reads_input else "output"
            raise ConfigError(f"site {self.site!r}: the {where} of {self.path} is a {type(value).__name__}, not a tensor")
        return value


def family_of(model: nn.Module | LoadedModel) -> Family | None:
    """The model's row in :data:`FAMILIES`, from ``config.model_type``; None for other families."""
    model = as_module(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for path in BLOCK_LISTS:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}: none of {', '.join(BLOCK_LISTS)} is a "
        "ModuleList; name sites by module path instead (e.g. 'model.layers.3.mlp')"
    )


def n_layers(model: nn.Module | LoadedModel) -> int:
    """Number of transformer blocks."""
    model = as_module(model)
    return len(_blocks(model)[1])


def layer_of(site: str) -> int | None:
    """Block index of a canonical site name (``layers.3.mlp_out`` -> 3); None for a module path."""
    match = _CANONICAL.fullmatch(site)
    if match is None or match["kind"] not in KINDS or not match["index"].isdigit():
        return None
    return int(match["index"])


def available_sites(model: nn.Module | LoadedModel) -> list[str]:
    """Every canonical site of the model, block by block."""
    model = as_module(model)
    kinds = KINDS if family_of(model) is not None else ("resid_pre", "resid_post")
    return [f"layers.{i}.{kind}" for i in range(n_layers(model)) for kind in kinds]


def site_module(model: nn.Module | LoadedModel, site: str) -> SiteHook:
    """The module and the tensor behind one site name (canonical or a module path; no globs)."""
    model = as_module(model)
    match = _CANONICAL.fullmatch(site)
    if match is None or match["kind"] not in KINDS:
        return _module_path_site(model, site)
    layer = layer_of(site)
    if layer is None:
        raise ConfigError(f"site {site!r} names no single layer; use resolve_sites to expand patterns")
    path, blocks = _blocks(model)
    _check_layer(site, layer, len(blocks))
    kind = match["kind"]
    block_path = f"{path}.{layer}"
    if kind in ("resid_pre", "resid_post"):
        return SiteHook(site, block_path, blocks[layer], reads_input=kind == "resid_pre")
    family = family_of(model)
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        known = sorted(t for f in FAMILIES for t in f.model_types)
        raise ConfigError(
            f"site {site!r}: where {kind} lives is unknown for model_type {model_type!r} "
            f"(known: {', '.join(known)}); resid_pre and resid_post work, or name a module path "
            f"such as '{block_path}.mlp'"
        )
    sub = {"attn_out": family.attn_out, "mlp_in": family.mlp_in, "mlp_out": family.mlp_out}[kind]
    return SiteHook(site, f"{block_path}.{sub}", blocks[layer].get_submodule(sub), reads_input=kind == "mlp_in")


def resolve_sites(model: nn.Module | LoadedModel, patterns: str | Iterable[str]) -> list[str]:
    """Expand site patterns into a sorted list of distinct site names.

    A pattern is a canonical name, a canonical name whose layer is ``*`` (every block) or ``{a..b}``
    (blocks a to b inclusive), or a module path. Canonical names come first, in the order the forward
    pass computes them; module paths follow in alphabetical order.
    """
    model = as_module(model)
    if isinstance(patterns, str):
        patterns = [patterns]
    names: set[str] = set()
    for pattern in patterns:
        match = _CANONICAL.fullmatch(pattern)
        if match is None or match["kind"] not in KINDS:
            names.add(_module_path_site(model, pattern).site)
            continue
        for layer in _expand_layers(pattern, match["index"], n_layers(model)):
            name = f"layers.{layer}.{match['kind']}"
            site_module(model, name)  # fails early, naming the site, for kinds the family lacks
            names.add(name)

    def order(name: str) -> tuple:
        layer = layer_of(name)
        return (1, 0, 0, name) if layer is None else (0, layer, KINDS.index(name.rsplit(".", 1)[1]), name)

    return sorted(names, key=order)


def _expand_layers(pattern: str, index: str, count: int) -> range:
    if index == "*":
        return range(count)
    if index.isdigit():
        _check_layer(pattern, int(index), count)
        return range(int(index), int(index) + 1)
    bounds = _RANGE.fullmatch(index)
    if bounds is None:
        raise ConfigError(f"site {pattern!r}: the layer must be a number, '*' or '{{a..b}}', got {index!r}")
    first, last = int(bounds[1]), int(bounds[2])
    if first > last:
        raise ConfigError(f"site {pattern!r}: empty layer range {index}")
    _check_layer(pattern, last, count)
    return range(first, last + 1)


def _check_layer(site: str, layer: int, count: int) -> None:
    if not 0 <= layer < count:
        raise ConfigError(f"site {site!r}: layer {layer} is out of range; the model has {count} layers (0..{count - 1})")


def _module_path_site(model: nn.Module, path: str) -> SiteHook:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        module = None
    if module is None or path == "":
        match = _CANONICAL.fullmatch(path)
        hint = f"unknown site kind {match['kind']!r}; " if match is not None else ""
        try:
            block_path, blocks = _blocks(model)
            layers, example = f"0..{len(blocks) - 1}", f"{block_path}.0.mlp"
        except ConfigError:  # no blocks found: the message still lists the grammar
            layers, example = "range", "model.layers.0.mlp"
        raise ConfigError(
            f"unknown site {path!r}: {hint}canonical sites are layers.{{i}}.{{{','.join(KINDS)}}} with i in "
            f"{layers} (or '*', '{{a..b}}'), or a module path such as {example}"
        )
    return SiteHook(path, path, module)
