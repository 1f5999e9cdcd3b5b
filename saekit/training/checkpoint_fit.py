"""Whether a checkpoint's tensors fit the run that resumes from it, checked before any is loaded.

torch would refuse some misfits with its own messages (a missing SAE tensor), and accept others
silently: an Adam moment of the wrong shape fails only at the next step, and a dead-latent counter of
one element broadcasts over all latents. Each misfit is named here instead, by SAE and tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")
"""What torch's Adam keeps per parameter (no amsgrad): every run's optimiser (training/optim.py)."""


def fit_problems(
    sae_states: Sequence[Mapping[str, Tensor]],
    optimizer_states: Sequence[Mapping[str, Any]],
    counters: Sequence[Tensor],
    rng_state: Tensor,
    saes: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    live_counters: Sequence[Tensor],
) -> list[str]:
    """Every way the saved state differs from the run's in names, shapes or types; empty if it fits."""
    if len(sae_states) != len(saes):
        return [f"it holds {len(sae_states)} SAE(s), the run trains {len(saes)}"]
    problems = []
    for i, sae in enumerate(saes):
        problems += _tensor_problems(f"SAE {i}", sae.state_dict(), sae_states[i])
        problems += _optimizer_problems(f"SAE {i}'s optimiser", optimizers[i], optimizer_states[i])
        problems += _tensor_problems(f"SAE {i}'s dead-latent counter", {"": live_counters[i]}, {"": counters[i]})
    live_rng = torch.get_rng_state()
    if rng_state.dtype != live_rng.dtype or rng_state.shape != live_rng.shape:
        problems.append(f"the RNG state is {rng_state.dtype} {list(rng_state.shape)}, torch's is {live_rng.dtype} {list(live_rng.shape)}")
    return problems


def _tensor_problems(where: str, live: Mapping[str, Tensor], saved: Mapping[str, Tensor]) -> list[str]:
    missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
    problems = [f"{where} lacks tensors {missing}"] if missing else []
    if extra:
        problems.append(f"{where} has tensors the run does not know: {extra}")
    for name in sorted(set(live) & set(saved)):
        a, b = live[name], saved[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            label = f"{where} tensor {name!r}" if name else where
            problems.append(f"{label} is {b.dtype} {list(b.shape)}, the run's is {a.dtype} {list(a.shape)}")
    return problems


def _optimizer_problems(where: str, optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> list[str]:
    live_groups, groups = optimizer.param_groups, saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in live_groups]:
        return [f"{where} has parameter groups of {[len(g['params']) for g in groups]} parameters, the run's of "
                f"{[len(g['params']) for g in live_groups]}"]  # fmt: skip
    problems = []
    for live, group in zip(live_groups, groups):
        for key in sorted(set(live) & set(group) - {"params"}):
            if not _same_kind(live[key], group[key]):
                problems.append(f"{where} setting {key!r} is {group[key]!r}, not a value like {live[key]!r}")
    params = saved_parameters(optimizer, saved)
    for pid, state in saved["state"].items():
        param = params.get(pid)
        if param is None:
            problems.append(f"{where} has state for parameter {pid}, which none of its groups holds")
            continue
        if sorted(state) != sorted(ADAM_STATE):
            problems.append(f"{where} state of parameter {pid} has {sorted(state)}, Adam keeps {list(ADAM_STATE)}")
            continue
        for name in ADAM_STATE:
            value, shape = state[name], () if name == "step" else tuple(param.shape)
            if not isinstance(value, Tensor) or not value.is_floating_point() or tuple(value.shape) != shape:
                problems.append(f"{where} {name} of parameter {pid} is not a float tensor of shape {list(shape)}")
    return problems


def saved_parameters(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> dict[Any, Tensor]:
    """Each parameter id of the saved optimiser state ``saved``, to the parameter of ``optimizer`` at its
    place in the groups, as torch's ``load_state_dict`` pairs them."""
    return {pid: p for live, group in zip(optimizer.param_groups, saved["param_groups"]) for pid, p in zip(group["params"], live["params"])}


def _same_kind(live: Any, saved: Any) -> bool:
    """Whether a saved hyper-parameter can stand where the run's is (a number for a number, ...)."""
    if isinstance(live, bool) or live is None:
        return isinstance(saved, bool) or saved is None
    if isinstance(live, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(live, tuple):
        return isinstance(saved, tuple) and len(saved) == len(live) and all(_same_kind(a, b) for a, b in zip(live, saved))
    return type(saved) is type(live)
