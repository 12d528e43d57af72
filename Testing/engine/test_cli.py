"""The ``activeseg`` command line, run as a user runs it (a subprocess), plus the demo on a tiny network."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from activeseg.experiments.demo import run_demo
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.store.cases import CaseState
from activeseg.store.datastore import Datastore

from ..tiny import PHANTOM_SHAPE, tiny_config, tiny_set_args


def activeseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "activeseg", *args], capture_output=True, text=True, timeout=300)


def test_init_train_rank_queue_status(phantom_source: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(phantom_source, source)
    (source / "imagesTr" / "phantom_009.nii.gz").write_bytes(b"not an image")
    store = tmp_path / "store"
    result = activeseg("init", str(store), "--from", str(source), "--with-labels", *tiny_set_args())
    assert result.returncode == 0, result.stderr
    assert "phantom_009.nii.gz" in result.stderr and "skipped" in result.stderr
    assert "9 case(s)" in result.stderr
    config = json.loads(activeseg("config", "--data", str(store)).stdout)
    assert config["labels"] == {"1": "lung", "2": "lesion"}
    assert config["network"]["channels"] == list(tiny_config().network.channels)  # the --set values were saved
    changed = activeseg("config", "--data", str(store), "--set", "alnt.lambda=1", "--set", "alnt.rectify=false")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["alnt"]["lambda_"] == 1.0
    assert activeseg("train", "--data", str(store), "--quiet").returncode == 0
    ranked = activeseg("rank", "--data", str(store), "--quiet")
    assert ranked.returncode == 0, ranked.stderr
    status = activeseg("status", "--data", str(store))
    assert "* v1" in status.stdout


def test_a_round_that_loses_to_its_parent_registers_nothing_and_says_so(phantom_source: Path, tmp_path: Path) -> None:
    """Issue 14 item 1: a round whose weights score lower on validation than the active model registers no copy
    of the old model and says what happened, with both scores."""
    store_root = tmp_path / "store"
    created = activeseg("init", str(store_root), "--from", str(phantom_source), "--with-labels", *tiny_set_args(),
                        "--set", "training.learning_rate=0.005", "--set", "training.epochs_first=3",
                        "--set", "training.steps_per_epoch=4")
    assert created.returncode == 0, created.stderr
    first = activeseg("train", "--data", str(store_root), "--quiet")
    assert first.returncode == 0, first.stderr
    assert "registered model v1" in first.stderr
    # a learning rate that can only wreck the model
    assert activeseg("config", "--data", str(store_root), "--set", "training.learning_rate=50").returncode == 0
    second = activeseg("train", "--data", str(store_root), "--quiet")
    assert second.returncode == 0, second.stderr
    assert re.search(r"kept the previous model v1: the new weights scored \d\.\d{3} against \d\.\d{3}", second.stderr), second.stderr
    store = Datastore(store_root)
    assert [m.version for m in store.models()] == [1] and store.active_version() == 1


def test_init_with_the_radiologists_labels_and_settings(phantom_source: Path, tmp_path: Path) -> None:
    """Issue 14 item 3: labels (names, values, colours, codes), val_fraction and lease_seconds set at init;
    every setting listed by 'activeseg config --help'; label values frozen once labels exist."""
    from activeseg.config import Config

    store_root = tmp_path / "store"
    created = activeseg("init", str(store_root), "--from", str(phantom_source / "imagesTr"),
                        "--set", "labels=liver,tumour", "--set", "labels.3=vessel", "--set", "label_colours.2=#ff0000",
                        "--set", "label_codes.3=SCT^59820001^Blood vessel", "--set", "val_fraction=0.3",
                        "--set", "lease_seconds=600")
    assert created.returncode == 0, created.stderr
    config = json.loads(activeseg("config", "--data", str(store_root)).stdout)
    assert config["labels"] == {"1": "liver", "2": "tumour", "3": "vessel"}
    assert config["label_colours"] == {"2": [1.0, 0.0, 0.0]} and config["val_fraction"] == 0.3
    assert config["lease_seconds"] == 600.0
    store = Datastore(store_root)
    assert store.counts()["val"] == 3  # 30 % of 10
    assert store.config.code(1) == "SCT^10200004^Liver" and store.config.code(3) == "SCT^59820001^Blood vessel"
    # every setting, with its meaning
    helped = activeseg("config", "--help").stdout
    names = ["labels", "label_colours", "label_codes", "val_fraction", "lease_seconds"] + [
        f"{section}.{name}" for section, values in Config().to_dict().items() if isinstance(values, dict)
        and section not in ("labels", "label_colours", "label_codes") for name in values]
    for name in names:
        assert re.search(rf"^  {re.escape(name)} = .*\n      \S", helped, re.MULTILINE), name
    # renaming is fine; new values once a label exists are refused, and nothing is changed
    assert activeseg("config", "--data", str(store_root), "--set", "labels.2=lesion").returncode == 0
    label = phantom_source / "labelsTr" / f"{store.cases()[0].case_id}.nii.gz"
    from activeseg.io.volumes import read_volume
    import numpy as np
    store.submit_label(store.cases()[0].case_id, read_volume(label, dtype=np.uint8))
    refused = activeseg("config", "--data", str(store_root), "--set", "labels=lung,lesion")
    assert refused.returncode == 2 and "cannot change once cases are labelled" in refused.stderr
    assert Datastore(store_root).config.labels == {1: "liver", 2: "lesion", 3: "vessel"}
    bad = activeseg("init", str(tmp_path / "s2"), "--from", str(phantom_source), "--set", "lease_seconds=0")
    assert bad.returncode == 2 and "lease_seconds must be > 0" in bad.stderr


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = activeseg("status", "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not an ActiveSeg datastore" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_source = activeseg("init", str(tmp_path / "s"), "--from", str(tmp_path))
    assert bad_source.returncode == 2 and "no .nii.gz" in bad_source.stderr


def test_bad_setting_is_named(phantom_source: Path, tmp_path: Path) -> None:
    result = activeseg("init", str(tmp_path / "s"), "--from", str(phantom_source), "--set", "alnt.lambda=2")
    assert result.returncode == 2 and "alnt.lambda" in result.stderr
    result = activeseg("init", str(tmp_path / "s"), "--from", str(phantom_source), "--set", "nonsense.x=1")
    assert result.returncode == 2 and "nonsense.x=1" in result.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    config = tiny_config()
    config.val_fraction = 0.25
    config.dsal.strong_per_round = 2
    config.dsal.confidence_bins = 1  # every scored case may be pseudo-labelled: the tiny model is not confident
    # 12 cases: 3 validation, 9 training; 2 + 2 labelled leave 5 to rank in round 2, so the weak set is not empty
    summary = run_demo(tmp_path / "demo", cases=12, rounds=2, initial_labels=2, progress=False, config=config, shape=PHANTOM_SHAPE)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][1]["expert"] == 2 + 2  # the radiologist labelled round 1's queue
    assert summary["curve"].is_file() and summary["curve"].stat().st_size > 1000
    # every ranking's pseudo-labels are kept as Slicer segmentations over their images (issue 14 item 8)
    pseudo = summary["pseudo_labels"]
    assert len(pseudo) == sum(r["new_pseudo"] for r in summary["rounds"]) > 0
    store = Datastore(tmp_path / "demo" / "store")
    last = tmp_path / "demo" / "pseudo_labels" / "round_2"
    for path in pseudo:
        assert path.name.endswith(".seg.nrrd") and path.parent.name in ("round_1", "round_2")
        case_id = path.name.removesuffix(".seg.nrrd")
        if path.parent == last:
            assert store.case(case_id).state == CaseState.PSEUDO
        labelmap = read_segmentation_labelmap(path, store.config.labels)
        assert labelmap.geometry == store.image_geometry(case_id) and labelmap.array.any()
    _check_final_predictions(store, summary["predictions"])


def _check_final_predictions(store: Datastore, predictions: list[Path]) -> None:
    assert sorted(p.name.removesuffix(".seg.nrrd") for p in predictions) == sorted(c.case_id for c in store.cases())
    for path in predictions:
        labelmap = read_segmentation_labelmap(path, store.config.labels)
        assert labelmap.geometry == store.image_geometry(path.name.removesuffix(".seg.nrrd"))


def test_demo_leaves_predictions_and_says_so_when_no_case_was_pseudo_labelled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 8: a demo whose rankings routed nothing to the weak labeller still leaves the final
    predictions, and says why its pseudo-label folder is empty, with paths that resolve from where it ran."""
    config = tiny_config()
    config.dsal.weak_start_round = 99
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="activeseg.experiments.demo"):
        summary = run_demo(Path("demo"), cases=8, rounds=1, initial_labels=2, progress=False, config=config,
                           shape=PHANTOM_SHAPE)
    assert summary["pseudo_labels"] == []
    _check_final_predictions(Datastore(tmp_path / "demo" / "store"), summary["predictions"])
    done = caplog.records[-1].getMessage()
    assert "pseudo-labels:     none: no ranking routed a case to the weak labeller" in done
    assert "final predictions: demo/predictions (8 .seg.nrrd files)" in done
    assert (tmp_path / "demo" / "predictions").is_dir() and "images:            demo/" in done


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.txt").write_text("do not delete")
    result = activeseg("demo", "--out", str(keep), "--quiet")
    assert result.returncode == 2 and "not an earlier demo output" in result.stderr
    assert (keep / "thesis.txt").read_text() == "do not delete"


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_import_no_torch_or_monai(argv: list[str]) -> None:
    """Issue 14 item 9: building the parser imported torch and MONAI (6 s, 418 MB for ``--version``)."""
    probe = (
        "import sys\nfrom activeseg.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'SimpleITK', 'matplotlib') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY=" in result.stderr, result.stderr
    assert result.stderr.rsplit("HEAVY=", 1)[1].strip() == ""
    assert ("activeseg 0.1.0" in result.stdout) if argv == ["--version"] else ("simulate" in result.stdout)


def test_simulate_strategy_choices_are_checked_and_listed() -> None:
    """The lazily read --strategy choices still refuse an unknown name and are listed by ``simulate --help``."""
    from activeseg.experiments.strategies import STRATEGIES

    refused = activeseg("simulate", "--dataset", "x", "--strategy", "bogus", "--out", "y.json")
    assert refused.returncode == 2 and "invalid choice: 'bogus'" in refused.stderr
    listed = activeseg("simulate", "--help").stdout
    assert all(name in listed for name in STRATEGIES)


def test_init_reports_each_problem_once_and_counts_them(phantom_source: Path, tmp_path: Path) -> None:
    """Issue 14 item 9: every label problem was printed twice (by the importer and by the CLI)."""
    source = tmp_path / "source"
    shutil.copytree(phantom_source, source)
    (source / "labelsTr" / "phantom_001.nii.gz").write_bytes(b"not a label")
    (source / "imagesTr" / "phantom_002.nii.gz").write_bytes(b"not an image")
    result = activeseg("init", str(tmp_path / "store"), "--from", str(source), "--with-labels")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for name in ("phantom_001.nii.gz", "phantom_002.nii.gz"):
        assert sum(name in line for line in lines) == 1, result.stderr
    assert "label of phantom_002 not imported: its image was not imported" in result.stderr  # item 6: named too
    assert result.stderr.count("Created ") == 1 and "3 problem(s) listed above" in result.stderr


def test_a_store_without_validation_split_gets_advice(phantom_source: Path, tmp_path: Path) -> None:
    """Issue 14 item 9: a store too small for the validation split said nothing about it."""
    source = tmp_path / "two"
    source.mkdir()
    for name in ("phantom_000.nii.gz", "phantom_001.nii.gz"):
        shutil.copy(phantom_source / "imagesTr" / name, source / name)
    result = activeseg("init", str(tmp_path / "store"), "--from", str(source))
    assert result.returncode == 0, result.stderr
    assert "0 in the fixed validation split" in result.stderr
    assert "no validation split" in result.stderr and "--set val_fraction=0.50" in result.stderr
    fixed = activeseg("init", str(tmp_path / "store2"), "--from", str(source), "--set", "val_fraction=0.50")
    assert "1 in the fixed validation split" in fixed.stderr and "no validation split" not in fixed.stderr
