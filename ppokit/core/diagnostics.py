"""Diagnostics of one update that need more than the losses: how well the critic fits."""

from __future__ import annotations

from torch import Tensor

from ppokit.core.advantages import masked_var


def explained_variance(predicted: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    r"""Explained variance :math:`1 - \mathrm{Var}[y - \hat y] / \mathrm{Var}[y]`.

    1 is a perfect value function, 0 is no better than predicting the mean, negative is worse.
    NaN when the targets have no variance.
    """
    var_y = masked_var(target, mask)
    if float(var_y) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(target - predicted, mask) / var_y)
