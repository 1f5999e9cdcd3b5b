"""Several models read side by side on the same tokens: the data of a cross-model crosscoder.

Model diffing (a base model against its fine-tune, or one model's training checkpoints) needs the
same site of each model at the same token in one row. :class:`ZippedSource` holds one
:class:`~saekit.sources.model.ModelSource` per model, all over the same contexts with the same chunking,
and serves their batches zipped: every source draws the same seeded order (:mod:`saekit.sources.order`),
so row ``r`` of every part is the same token. A site is named ``"<model name>/<site>"``, e.g.
``"base/layers.3.resid_post"`` and ``"chat/layers.3.resid_post"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from saekit.errors import ConfigError
from saekit.sources.model import ModelSource
from saekit.types import ActBatch


class ZippedSource:
    """The sites of every model of ``parts`` (name -> ModelSource), as ``"name/site"``, row for row."""

    def __init__(self, parts: Mapping[str, ModelSource]) -> None:
        if len(parts) < 2:
            raise ConfigError(f"models side by side need two or more models, got {list(parts)}")
        for name in parts:
            if not name or "/" in name:
                raise ConfigError(f"a model's name in a models table must be non-empty and free of '/', got {name!r}")
        self.parts = dict(parts)
        first_name, first = next(iter(self.parts.items()))
        for name, part in self.parts.items():
            settings = (part.chunk_seqs, part.skip_positions, part.with_grads)
            if not torch.equal(part.tokens, first.tokens) or settings != (
                first.chunk_seqs,
                first.skip_positions,
                first.with_grads,
            ):
                raise ConfigError(
                    f"models {first_name!r} and {name!r} do not read the same tokens with the same chunking: "
                    "their rows would not be the same tokens"
                )
        self._sites = tuple(f"{name}/{site}" for name, part in self.parts.items() for site in part.sites)

    @property
    def sites(self) -> tuple[str, ...]:
        return self._sites

    def _split(self, site: str) -> tuple[ModelSource, str]:
        name, _, inner = site.partition("/")
        if site not in self._sites:
            raise ConfigError(f"site {site!r} is not one of this source's sites {list(self._sites)}")
        return self.parts[name], inner

    def d_in(self, site: str) -> int:
        part, inner = self._split(site)
        return part.d_in(inner)

    def describe(self) -> dict:
        return {"kind": "models", "models": {name: part.describe() for name, part in self.parts.items()}}

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        streams = {name: part.batches(batch_size, seed=seed, start=start) for name, part in self.parts.items()}
        while True:
            yield {f"{name}/{site}": acts for name, stream in streams.items() for site, acts in next(stream).items()}

    def iter_rows(
        self, batch_size: int, *, site: str | None = None, max_rows: int | None = None, seed: int = 0
    ) -> Iterator[Tensor]:
        """One site's rows once, in stream order (each model's own ``iter_rows``)."""
        if site is None:
            raise ConfigError(f"name one of the sites {list(self._sites)}")
        part, inner = self._split(site)
        return part.iter_rows(batch_size, site=inner, max_rows=max_rows, seed=seed)
