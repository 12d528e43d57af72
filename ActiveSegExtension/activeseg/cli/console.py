"""Terminal output of the command line: progress bars over progress events, and plain-text tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ProgressBar", "format_table"]


class ProgressBar:
    """A tqdm bar driven by the engine's progress events (``step``/``steps``, ``epoch``/``epochs``).

    Use as the ``progress`` callback of ``train_round`` or ``rank_round``; call :meth:`close` at the end.
    """

    def __init__(self, description: str, enabled: bool = True) -> None:
        self.description = description
        self.enabled = enabled
        self._bar: Any = None

    def __call__(self, event: dict[str, Any]) -> bool:
        if not self.enabled:
            return True
        from tqdm import tqdm

        if event.get("phase") not in ("train", "validate", "rank", "pseudo-label"):
            return True  # preprocess, compare_parent, write: no step bar
        if event.get("phase") == "validate":
            if self._bar is not None and event.get("val_dice") is not None and "loss" in event:
                self._bar.set_postfix(loss=f"{event['loss']:.3f}", val_dice=f"{event['val_dice']:.3f}")
            return True
        total = event.get("steps", 1) * event.get("epochs", 1)
        done = (event.get("epoch", 1) - 1) * event.get("steps", 1) + event.get("step", 0)
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.description, unit="step", leave=False, dynamic_ncols=True)
        self._bar.n = done
        if "loss" in event:
            self._bar.set_postfix(loss=f"{event['loss']:.3f}", refresh=False)
        self._bar.refresh()
        return True

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], formatters: dict[int, Callable[[Any], str]] | None = None,
                 markdown: bool = False) -> str:
    """A fixed-width text table (``markdown``: a Markdown table); floats get 3 decimals unless a column formatter
    says otherwise."""
    formatters = formatters or {}

    def cell(index: int, value: Any) -> str:
        if index in formatters:
            return formatters[index](value)
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    text_rows = [[cell(i, v) for i, v in enumerate(row)] for row in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                         + ["| " + " | ".join(row) + " |" for row in text_rows])
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in text_rows]
    return "\n".join(lines)
