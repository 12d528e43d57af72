"""Learning-curve figures (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["learning_curve_figure", "plot_learning_curve"]


def learning_curve_figure(
    curves: dict[str, list[tuple[float, float, float]]], title: str, xlabel: str = "expert-labelled volumes",
    losses: dict[str, list[tuple[float, float]]] | None = None,
) -> Any:
    """The learning-curve figure: Dice on its own 0-1 axis and, when given, the training loss on a second axis.

    Dice (0-1) and a loss of ~2 on one axis flattened the Dice curve; the loss gets its own panel below with
    an automatic scale, sharing the x axis.

    Args:
        curves: name -> [(labelled count, mean Dice, sd)] sorted by count.
        title: figure title.
        xlabel: x-axis label.
        losses: name -> [(labelled count, final training loss (unitless))]; ``None`` or empty: no loss panel.

    Returns:
        The ``matplotlib.figure.Figure`` (first axes: Dice; second, if any: loss).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_loss = bool(losses)
    if with_loss:
        figure, (dice_axes, loss_axes) = plt.subplots(
            2, 1, figsize=(6.4, 6.0), dpi=120, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        figure, dice_axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, points in curves.items():
        xs = [p[0] for p in points]
        means = [p[1] for p in points]
        sds = [p[2] for p in points]
        dice_axes.plot(xs, means, marker="o", label=name)
        dice_axes.fill_between(xs, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)], alpha=0.15)
    dice_axes.set_ylabel("Dice (mean over classes)")
    dice_axes.set_ylim(0.0, 1.0)
    dice_axes.grid(alpha=0.3)
    dice_axes.set_title(title)
    dice_axes.legend(loc="lower right")
    if with_loss:
        for name, loss_points in (losses or {}).items():
            loss_axes.plot([p[0] for p in loss_points], [p[1] for p in loss_points], marker="s", color="tab:red", label=name)
        loss_axes.set_ylabel("final training loss")
        loss_axes.grid(alpha=0.3)
        loss_axes.set_xlabel(xlabel)
    else:
        dice_axes.set_xlabel(xlabel)
    figure.tight_layout()
    return figure


def plot_learning_curve(
    curves: dict[str, list[tuple[float, float, float]]], path: Path, title: str, xlabel: str = "expert-labelled volumes",
    losses: dict[str, list[tuple[float, float]]] | None = None,
) -> Path:
    """Write :func:`learning_curve_figure` as a PNG at ``path`` (folders created) and return ``path``."""
    import matplotlib.pyplot as plt

    figure = learning_curve_figure(curves, title, xlabel, losses)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
