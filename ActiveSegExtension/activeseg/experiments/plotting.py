"""Learning-curve figures (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_learning_curve"]


def plot_learning_curve(
    curves: dict[str, list[tuple[float, float, float]]], path: Path, title: str, xlabel: str = "expert-labelled volumes"
) -> Path:
    """Plot Dice against labelled volumes, one line per curve, with a +/- sd band.

    Args:
        curves: name -> [(labelled count, mean Dice, sd)] sorted by count.
        path: PNG to write.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, points in curves.items():
        xs = [p[0] for p in points]
        means = [p[1] for p in points]
        sds = [p[2] for p in points]
        axes.plot(xs, means, marker="o", label=name)
        axes.fill_between(xs, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)], alpha=0.15)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("Dice (mean over classes)")
    axes.set_ylim(0.0, 1.0)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
