"""The module's ``.ui`` loads with PySide6's QUiLoader and has every widget ``ActiveSeg.py`` uses.

Slicer's ctk/qMRML widgets are unknown to plain Qt: QUiLoader falls back to the base classes declared in
``<customwidgets>`` (see SLICER_CORE_NOTES.md), so names, layout and dynamic properties can still be checked.
"""

from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ActiveSegModule"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ActiveSeg.ui"
MODULE_FILE = MODULE_DIR / "ActiveSeg.py"
SECTIONS = {"backendCollapsibleButton": "Backend", "queueCollapsibleButton": "Queue",
            "segmentCollapsibleButton": "Segment", "trainCollapsibleButton": "Train",
            "reviewCollapsibleButton": "Review"}


def ui_names_used_by_module() -> set[str]:
    """Every ``<name>`` in ``self.ui.<name>`` in ActiveSeg.py."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def test_the_module_uses_ui_widgets() -> None:
    assert {"connectButton", "nextCaseButton", "submitButton", "retrainButton", "segmentEditorWidget"} <= \
        ui_names_used_by_module()


def test_xml_declares_custom_widgets_and_parameter_bindings() -> None:
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= set(declared), f"undeclared custom widgets {custom - set(declared)}"
    assert declared["qMRMLSegmentEditorWidget"] == "qMRMLWidget" and declared["ctkCollapsibleButton"] == "QWidget"
    bindings = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0"  # a dynamic property, as Slicer's GUI connectors expect
                bindings[widget.get("name")] = prop.findtext("string")
    assert bindings == {"serverUrlLineEdit": "serverUrl", "annotatorLineEdit": "annotator"}
    # Every bound name is a field of the parameter node; the token is not (the scene is saved in clear text).
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert all(f"    {name}: str" in source for name in bindings.values())
    fields = _parameter_node_fields()
    assert set(bindings.values()) <= fields and not any("token" in name.lower() for name in fields)


def _parameter_node_fields() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ActiveSegParameterNode")
    return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}


def test_ui_loads_with_quiloader_and_has_every_widget_the_module_uses() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtCore = pytest.importorskip("PySide6.QtCore")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ui_file = QtCore.QFile(str(UI_FILE))
    assert ui_file.open(QtCore.QIODevice.ReadOnly)
    try:
        widget = QtUiTools.QUiLoader().load(ui_file)
    finally:
        ui_file.close()
    assert widget is not None, "QUiLoader could not load ActiveSeg.ui"
    found = {child.objectName(): child for child in widget.findChildren(QtCore.QObject) if child.objectName()}
    missing = ui_names_used_by_module() - set(found)
    assert not missing, f"ActiveSeg.py uses widgets missing from the .ui: {sorted(missing)}"
    for name, title in SECTIONS.items():
        assert found[name].property("text") == title
    table = found["queueTable"]
    assert isinstance(table, QtWidgets.QTableWidget) and table.columnCount() == 4
    assert [table.horizontalHeaderItem(c).text() for c in range(4)] == ["Case", "M-DSC", "Route", "State"]
    assert isinstance(found["trainProgressBar"], QtWidgets.QProgressBar)
    assert isinstance(found["noFindingCheckBox"], QtWidgets.QCheckBox)
    assert isinstance(found["uncertaintyCheckBox"], QtWidgets.QCheckBox) and found["uncertaintyCheckBox"].isChecked()
    assert found["tokenLineEdit"].echoMode() == QtWidgets.QLineEdit.Password
    widget.deleteLater()
    app.processEvents()
