"""Hand the embedded Segment Editor over cleanly when the user enters or leaves the module. No imports.

Slicer's own Segment Editor module does the same in its ``enter``/``exit``: without it, the effect chosen here
stays active after the user switches modules, and clicks in another module keep painting into the case.
"""

from __future__ import annotations

from typing import Any

__all__ = ["enter_editor", "leave_editor"]


def enter_editor(editor: Any) -> None:
    """The module is shown: install the editor's keyboard shortcuts and slice-view observations.

    Args:
        editor: the module's ``qMRMLSegmentEditorWidget``.
    """
    editor.installKeyboardShortcuts()
    editor.setupViewObservations()
    editor.updateWidgetFromMRML()


def leave_editor(editor: Any) -> None:
    """The module is left: deactivate the effect and remove its view observations and shortcuts.

    Args:
        editor: the module's ``qMRMLSegmentEditorWidget``.
    """
    editor.setActiveEffect(None)
    editor.uninstallKeyboardShortcuts()
    editor.removeViewObservations()
