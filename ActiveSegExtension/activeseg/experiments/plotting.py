"""Learning-curve figures (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["Band", "learning_curve_figure", "plot_learning_curve"]


Band = tuple[float, float, float, float]  # (labelled count, centre, band low, band high)


def learning_curve_figure(
    curves: dict[str, list[Band]], title: str, xlabel: str = "expert-labelled volumes",
    losses: dict[str, list[tuple[float, float]]] | None = None,
    differences: dict[str, list[Band]] | None = None, reference: str = "fg-random",
) -> Any:
    """The learning-curve figure: Dice on its own 0-1 axis; below it, when given, either the paired differences to
    a reference strategy or the training loss, each on its own automatically scaled axis sharing the x axis.

    Dice (0-1) and a loss of ~2 (or a difference of ~0.01) on one axis flattened the Dice curve.

    Args:
        curves: name -> [(labelled count, mean Dice, band low, band high)] sorted by count (the band: a 95 %
            interval, or low == high for none).
        title: figure title.
        xlabel: x-axis label.
        losses: name -> [(labelled count, final training loss (unitless))]; ``None`` or empty: no loss panel.
        differences: name -> [(labelled count, mean paired Dice difference to ``reference``, 95 % low, high)].
        reference: the strategy the differences are taken against (named on the axis).

    Returns:
        The ``matplotlib.figure.Figure`` (first axes: Dice; second, if any: differences or loss).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_loss = bool(losses) and not differences
    if with_loss or differences:
        figure, (dice_axes, lower_axes) = plt.subplots(
            2, 1, figsize=(6.4, 6.4), dpi=120, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        figure, dice_axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours = {name: f"C{index}" for index, name in enumerate(curves)}
    for name, points in curves.items():
        xs = [p[0] for p in points]
        dice_axes.plot(xs, [p[1] for p in points], marker="o", label=name, color=colours[name])
        dice_axes.fill_between(xs, [p[2] for p in points], [p[3] for p in points], alpha=0.15, color=colours[name])
    dice_axes.set_ylabel("Dice (mean over classes)")
    dice_axes.set_ylim(0.0, 1.0)
    dice_axes.grid(alpha=0.3)
    dice_axes.set_title(title)
    dice_axes.legend(loc="lower right")
    if differences:
        lower_axes.axhline(0.0, color="black", linewidth=0.8)
        for name, points in differences.items():
            xs = [p[0] for p in points]
            colour = colours.get(name)
            lower_axes.plot(xs, [p[1] for p in points], marker="o", label=name, color=colour)
            lower_axes.fill_between(xs, [p[2] for p in points], [p[3] for p in points], alpha=0.15, color=colour)
        lower_axes.set_ylabel(f"Dice - {reference}\n(paired, 95 % CI)")
        lower_axes.grid(alpha=0.3)
        lower_axes.set_xlabel(xlabel)
    elif with_loss:
        for name, loss_points in (losses or {}).items():
            lower_axes.plot([p[0] for p in loss_points], [p[1] for p in loss_points], marker="s", color="tab:red", label=name)
        lower_axes.set_ylabel("final training loss")
        lower_axes.grid(alpha=0.3)
        lower_axes.set_xlabel(xlabel)
    else:
        dice_axes.set_xlabel(xlabel)
    figure.tight_layout()
    return figure


def plot_learning_curve(
    curves: dict[str, list[Band]], path: Path, title: str, xlabel: str = "expert-labelled volumes",
    losses: dict[str, list[tuple[float, float]]] | None = None,
    differences: dict[str, list[Band]] | None = None, reference: str = "fg-random",
) -> Path:
    """Write :func:`learning_curve_figure` as a PNG at ``path`` (folders created) and return ``path``."""
    import matplotlib.pyplot as plt

    figure = learning_curve_figure(curves, title, xlabel, losses, differences, reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
