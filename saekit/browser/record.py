"""The compact per-latent record of a browser store: one fixed-size, little-endian record per latent,
so that latent ``i`` is the bytes ``[i * size, (i + 1) * size)`` of ``latents.bin`` (the page reads
one latent with one range request; Python reads them all as one numpy structured array).

Activations are stored relative to the latent's largest activation ``max_act`` (float32): example
values as uint16 (steps of max/65535) and the activations of example windows as uint8 (steps of
max/255, enough to shade a token and to mark it for ``saekit interpret``); a positive activation is
never stored as 0, so whether a latent fires on a token survives the rounding. Rows are int32 indices into
the shared token sample (``tokens.bin``), never token strings; logit effects and decoder cosines are
float16 (clamped to its range). :func:`record_dtype` is the one definition of the layout: the writer,
the reader and the page (through :func:`field_table`) all take it from there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from saekit.browser.effects import LogitEffects, Neighbours
from saekit.browser.meta import Dims
from saekit.browser.stats import LatentStats

_F16_MAX = 65504.0
_VALUE_STEPS, _WINDOW_STEPS = 65535, 255


def record_dtype(d: Dims) -> np.dtype:
    """The numpy layout of one latent's record (packed, little-endian)."""
    fields = [
        ("max_act", "<f4", ()), ("act_sum", "<f4", ()), ("fire_count", "<u4", ()),
        ("top_values", "<u2", (d.top,)), ("top_rows", "<i4", (d.top,)),
        ("quantile_values", "<u2", (d.bands, d.per_band)), ("quantile_rows", "<i4", (d.bands, d.per_band)),
        ("random_rows", "<i4", (d.random,)), ("top_windows", "u1", (d.top, d.window)),
        ("quantile_windows", "u1", (d.bands, d.per_band, d.window)), ("random_windows", "u1", (d.random, d.window)),
        ("histogram", "<u4", (d.bins,)), ("neighbour_ids", "<i4", (d.neighbours,)), ("neighbour_cosine", "<f2", (d.neighbours,)),
        ("promoted_ids", "<i4", (d.logit_k,)), ("promoted", "<f2", (d.logit_k,)),
        ("suppressed_ids", "<i4", (d.logit_k,)), ("suppressed", "<f2", (d.logit_k,)),
    ]  # fmt: skip
    return np.dtype(fields)


def field_table(dtype: np.dtype) -> list[list[object]]:
    """[name, kind ("f4", "f2", "u4", "u2", "u1", "i1", "i4"), byte offset, element count] of each field of a
    structured ``dtype``: what the page's script needs to read a record."""
    table: list[list[object]] = []
    for name in dtype.names or ():
        sub, offset = dtype.fields[name][:2]  # type: ignore[index]
        base = sub.base if sub.subdtype else sub
        table.append([name, f"{base.kind}{base.itemsize}", int(offset), int(np.prod(sub.shape)) if sub.shape else 1])
    return table


def dims_of(stats: LatentStats, neighbours: Neighbours, effects: LogitEffects | None) -> Dims:
    _, bands, per_band, window = stats.quantile_windows.shape
    return Dims(
        top=stats.top_values.shape[1], bands=bands, per_band=per_band, random=stats.random_rows.shape[1], window=window,
        bins=stats.histogram.shape[1], neighbours=neighbours.ids.shape[1], logit_k=0 if effects is None else effects.promoted.shape[1],
    )  # fmt: skip


def encode(stats: LatentStats, neighbours: Neighbours, effects: LogitEffects | None) -> np.ndarray:
    """The records of every latent (a structured array of :func:`record_dtype`)."""
    dims = dims_of(stats, neighbours, effects)
    out = np.zeros(stats.top_values.shape[0], dtype=record_dtype(dims))
    top = stats.max_act.float().clamp(min=0)
    out["max_act"] = top.numpy()
    out["act_sum"] = stats.act_sum.float().numpy()
    out["fire_count"] = stats.fire_count.numpy()
    scale = torch.where(top > 0, top, 1.0)

    def relative(values: Tensor, steps: int) -> np.ndarray:
        per = scale.view(-1, *[1] * (values.ndim - 1))
        q = (values.float().clamp(min=0) / per * steps).round().clamp(0, steps)
        return torch.where((values > 0) & (q == 0), 1.0, q).numpy()  # a firing stays a firing (interpret, shading)

    for name in ("top_values", "quantile_values"):
        out[name] = relative(getattr(stats, name), _VALUE_STEPS)
    for name in ("top_windows", "quantile_windows", "random_windows"):
        out[name] = relative(getattr(stats, name), _WINDOW_STEPS)
    for name in ("top_rows", "quantile_rows", "random_rows", "histogram"):
        out[name] = getattr(stats, name).numpy()
    out["neighbour_ids"], out["neighbour_cosine"] = neighbours.ids.numpy(), _half(neighbours.cosine)
    if effects is not None:
        out["promoted_ids"], out["suppressed_ids"] = effects.promoted_ids.numpy(), effects.suppressed_ids.numpy()
        out["promoted"], out["suppressed"] = _half(effects.promoted), _half(effects.suppressed)
    return out


def _half(values: Tensor) -> np.ndarray:
    return values.float().clamp(-_F16_MAX, _F16_MAX).numpy().astype("<f2")


def _widened(column: np.ndarray) -> np.ndarray:
    """A column as a fresh, writable float32 or int64 array (torch reads neither uint16 nor uint32 well)."""
    return np.array(column, dtype=np.float32 if column.dtype.kind == "f" else np.int64, order="C")


def decode(records: np.ndarray, n_rows: int, has_effects: bool) -> tuple[LatentStats, Neighbours, LogitEffects | None]:
    """The statistics, neighbours and logit effects held by ``records`` (checked by the store), as float tensors."""
    col = {name: torch.from_numpy(_widened(records[name])) for name in records.dtype.names or ()}
    top = col["max_act"].float()

    def absolute(name: str, steps: int) -> Tensor:
        values = col[name].float() / steps
        return values * top.view(-1, *[1] * (values.ndim - 1))

    stats = LatentStats(
        n_rows=n_rows, top_values=absolute("top_values", _VALUE_STEPS), top_rows=col["top_rows"].long(),
        quantile_values=absolute("quantile_values", _VALUE_STEPS), quantile_rows=col["quantile_rows"].long(),
        top_windows=absolute("top_windows", _WINDOW_STEPS), quantile_windows=absolute("quantile_windows", _WINDOW_STEPS),
        random_rows=col["random_rows"].long(), random_windows=absolute("random_windows", _WINDOW_STEPS),
        histogram=col["histogram"].long(), fire_count=col["fire_count"].long(), act_sum=col["act_sum"].double(),
    )  # fmt: skip
    neighbours = Neighbours(col["neighbour_ids"].long(), col["neighbour_cosine"].float())
    effects = None
    if has_effects:
        effects = LogitEffects(
            col["promoted_ids"].long(), col["promoted"].float(), col["suppressed_ids"].long(), col["suppressed"].float()
        )
    return stats, neighbours, effects
