"""Issue 14 item 9: the learning-curve figure keeps Dice on its own 0-1 axis and the loss on another."""

from __future__ import annotations

from pathlib import Path

from activeseg.experiments.plotting import learning_curve_figure, plot_learning_curve


def test_dice_and_loss_are_on_separate_axes(tmp_path: Path) -> None:
    curves = {"dsal": [(4.0, 0.31, 0.31, 0.31), (8.0, 0.55, 0.53, 0.57)]}
    losses = {"final training loss": [(4.0, 2.2), (8.0, 1.7)]}
    figure = learning_curve_figure(curves, "t", losses=losses)
    dice_axes, loss_axes = figure.axes
    assert tuple(dice_axes.get_ylim()) == (0.0, 1.0)
    assert [list(line.get_ydata()) for line in dice_axes.get_lines()] == [[0.31, 0.55]]
    assert [list(line.get_ydata()) for line in loss_axes.get_lines()] == [[2.2, 1.7]]
    assert loss_axes.get_ylim()[1] >= 2.2 and "loss" in loss_axes.get_ylabel()
    path = plot_learning_curve(curves, tmp_path / "sub" / "curve.png", "t", losses=losses)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_losses_there_is_one_dice_axis() -> None:
    figure = learning_curve_figure({"dsal": [(4.0, 0.3, 0.3, 0.3)]}, "t")
    assert len(figure.axes) == 1 and tuple(figure.axes[0].get_ylim()) == (0.0, 1.0)


def test_differences_panel_replaces_the_loss_panel() -> None:
    curves = {"dsal+alnt": [(4.0, 0.6, 0.55, 0.65), (8.0, 0.7, 0.66, 0.74)], "fg-random": [(4.0, 0.6, 0.55, 0.65), (8.0, 0.68, 0.6, 0.7)]}
    differences = {"dsal+alnt": [(4.0, 0.0, 0.0, 0.0), (8.0, 0.02, -0.01, 0.05)]}
    figure = learning_curve_figure(curves, "t", losses={"loss": [(4.0, 1.0)]}, differences=differences)
    dice_axes, difference_axes = figure.axes
    assert "fg-random" in difference_axes.get_ylabel()
    plotted = [list(line.get_ydata()) for line in difference_axes.get_lines()]
    assert [0.0, 0.02] in plotted  # the difference curve (the other line is the zero reference)
