"""Linear probes of a game's board from a model's activations: the baseline the board-game paper's
SAE metrics sit beside.

One multinomial logistic regression per square (Othello: mine / empty / theirs; chess: the 13 piece
classes) on the standardised activations, fitted by L-BFGS on the positions before ``split`` with a
small L2 penalty, scored on the rest. The prediction is one class per square, so it is compared with
the board properties as board reconstruction compares an SAE's: F1 over every (square, class) property,
and over the blank-masked ones (the empty class left out).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from saekit.errors import DataError

L2 = 1e-4
"""Weight of the L2 penalty on the probe's weights (the activations are standardised)."""


class ProbeResult(NamedTuple):
    accuracy: float
    """Share of (position, square) pairs of the test positions whose class is predicted right."""
    f1_board: float
    """F1 of the predicted one-hot board against every (square, class) property (equal to the accuracy)."""
    f1_blank_masked: float
    """F1 over the properties of the classes other than empty (the blank-masked set)."""


def probe_board(acts: torch.Tensor, board: np.ndarray, split: int, *, classes: int = 3, empty: int = 1, steps: int = 200) -> ProbeResult:
    """Fit on rows ``[:split]`` of ``acts`` [positions, d] and ``board`` (bool [positions, 64 · classes],
    the classes of each square in order, ``empty`` the index of the empty class: Othello's
    ``othello_properties.CLASSES`` by default, chess's ``chess_properties.PIECES`` with 13 and 6) and
    score on the rest."""
    if not 0 <= empty < classes:
        raise DataError(f"probe_board: the empty class {empty} is not one of the {classes} classes")
    labels = _labels(board, classes)
    if not 0 < split < len(labels) or acts.shape[0] != len(labels):
        raise DataError(f"probe_board: {acts.shape[0]} activations, {len(labels)} boards, split {split}")
    x = acts.double()
    mean, std = x[:split].mean(0), x[:split].std(0).clamp_min(1e-8)
    x = (x - mean) / std
    squares = labels.shape[1]
    weight = torch.zeros(x.shape[1], squares * classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(squares * classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")
    fit_x, fit_y = x[:split], labels[:split]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (fit_x @ weight + bias).view(-1, squares, classes)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), fit_y) + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        predicted = (x[split:] @ weight + bias).view(-1, squares, classes).argmax(-1)
    truth = labels[split:]
    one_hot = torch.nn.functional.one_hot(predicted, classes).bool()
    true_hot = torch.nn.functional.one_hot(truth, classes).bool()
    masked = torch.arange(classes) != empty
    return ProbeResult(float((predicted == truth).double().mean()), _f1(one_hot, true_hot), _f1(one_hot[..., masked], true_hot[..., masked]))


def _labels(board: np.ndarray, classes: int) -> torch.Tensor:
    values = np.asarray(board)
    if values.dtype != np.bool_ or values.ndim != 2 or values.shape[1] % classes:
        raise DataError(f"probe_board: board must be bool [positions, squares · {classes}], got {values.dtype} {values.shape}")
    per_square = values.reshape(len(values), -1, classes)
    if not (per_square.sum(-1) == 1).all():
        raise DataError("probe_board: every square must hold exactly one of its classes")
    return torch.from_numpy(per_square.argmax(-1).astype(np.int64))


def _f1(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    tp = float((predicted & truth).sum())
    fp = float((predicted & ~truth).sum())
    fn = float((~predicted & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1.0)
