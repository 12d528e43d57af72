"""Label-efficiency simulation (issue 6): strategies, splits, repeatability, the CLI and the plot.

Tiny phantoms and a tiny network keep the whole file well under 90 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from activeseg.cli.main import main
from activeseg.cli.simulate import _ordered
from activeseg.experiments.simulation import (
    SimulationSettings, evaluate_test_split, load_results, plan_splits, simulate, strategy_label,
)
from activeseg.errors import ConfigError
from activeseg.experiments.statistics import collect_curves
from activeseg.experiments.strategies import STRATEGIES, get_strategy, predictive_entropy

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "hippocampus_mri"

TINY = [
    "network.channels=4,8,16,16",
    "training.patch_size=16,32,32",
    "training.epochs_first=1",
    "training.epochs_per_round=1",
    "training.steps_per_epoch=2",
    "training.num_threads=1",
    "dsal.weak_start_round=1",
    "dsal.weak_initial=1",
    "dsal.weak_increment=1",
    "dsal.confidence_bins=1",
    "training.unlearned_class_dice=0",  # two steps need not learn every class to produce pseudo-labels
]


def _run(source: Path, work: Path, strategy: str, seed: int = 0, **options: object) -> dict:
    kwargs = {"rounds": 2, "per_round": 1, "initial": 2, "test_fraction": 0.2, "val_fraction": 0.2, "overrides": TINY,
              "mc_passes": 2, **options}
    kwargs.setdefault("work_dir", work / f"{strategy}-{seed}")
    return simulate(source, strategy, seed=seed, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def runs(phantom_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One 2-round run of every strategy (and DSAL without ALNT) on 10 phantoms, seed 0.

    All but ``random`` share a round-0 cache; ``random`` trains its own round 0, so comparing the two
    checks that the cache is exact (and training deterministic).
    """
    work = tmp_path_factory.mktemp("sim")
    cache = work / "round0"
    results = {name: _run(phantom_source, work, name, round0_cache=None if name == "random" else cache) for name in STRATEGIES}
    results["dsal-noalnt"] = _run(phantom_source, work, "dsal", alnt=False, work_dir=work / "dsal-noalnt", round0_cache=cache)
    return results


def test_every_strategy_runs_two_rounds_with_well_formed_results(runs: dict[str, dict]) -> None:
    for name, result in runs.items():
        assert result["format"] == "activeseg-simulation/1"
        assert len(result["rounds"]) == 3, name  # round 0 + 2 query rounds
        json.dumps(result)  # JSON-ready
        for row in result["rounds"]:
            assert set(row["test_dice"]) == {"lung", "lesion", "mean"}
            assert all(0.0 <= v <= 1.0 for v in row["test_dice"].values())
            assert row["train_s"] > 0 and row["rank_s"] >= 0
            assert row["labelled"] == len(row["labelled_cases"])
        if name != "full":
            assert [r["labelled"] for r in result["rounds"]] == [2, 3, 4], name
            assert all(len(r["selected"]) == 1 for r in result["rounds"][:-1]), name
    assert runs["dsal"]["metadata"]["label"] == "dsal+alnt"
    assert runs["dsal-noalnt"]["metadata"]["label"] == "dsal"
    assert runs["dsal-noalnt"]["metadata"]["config"]["alnt"]["enabled"] is False


def test_test_split_never_enters_labelled_or_pseudo_sets(runs: dict[str, dict]) -> None:
    for name, result in runs.items():
        test = set(result["metadata"]["test_cases"])
        val = set(result["metadata"]["val_cases"])
        assert test and not test & val
        for row in result["rounds"]:
            touched = set(row["labelled_cases"]) | set(row["pseudo_cases"]) | set(row["selected"]) | set(row["new_pseudo"])
            assert not touched & test, name
            assert not touched & val, name  # validation never trains either


def test_dsal_writes_pseudo_labels_and_trains_on_them(runs: dict[str, dict]) -> None:
    rows = runs["dsal"]["rounds"]
    assert rows[0]["new_pseudo"], "weak_start_round=1: the first ranking writes pseudo-labels"
    assert rows[1]["pseudo"] >= 1 and rows[1]["alnt"], "round 1 trains on them with ALNT statistics"
    assert runs["dsal-noalnt"]["rounds"][1]["pseudo"] >= 1 and not runs["dsal-noalnt"]["rounds"][1]["alnt"]
    assert all(r["pseudo"] == 0 for n in ("random", "fg-random", "entropy", "mc-dropout", "full") for r in runs[n]["rounds"])


def test_pseudo_label_quality_is_measured_against_the_truth(runs: dict[str, dict]) -> None:
    rows = runs["dsal"]["rounds"]
    first = rows[0]
    assert set(first["pseudo_dice"]) == set(first["new_pseudo"])
    assert all(0.0 <= d <= 1.0 for d in first["pseudo_dice"].values())
    assert first["pseudo_dice_mean"] == pytest.approx(np.mean(list(first["pseudo_dice"].values())))
    agreement = rows[1]["alnt_weight_vs_dice"]  # round 1 trained on them with ALNT: every pseudo crop was scored
    assert agreement["crops"] >= 2 and 0.0 <= agreement["mean_crop_dice"] <= 1.0
    assert rows[0]["alnt_weight_vs_dice"] == {}  # round 0 had no pseudo-labels
    assert runs["dsal-noalnt"]["rounds"][1]["alnt_weight_vs_dice"] == {}  # no ALNT, no weights


def test_per_case_test_dice_averages_to_the_reported_mean_for_one_class_cases(runs: dict[str, dict]) -> None:
    for row in runs["random"]["rounds"]:
        assert set(row["test_per_case"]) == set(runs["random"]["metadata"]["test_cases"])
        assert all(0.0 <= d <= 1.0 for d in row["test_per_case"].values())


def test_entropy_queries_the_highest_entropy_cases(runs: dict[str, dict], phantom_source: Path, tmp_path: Path) -> None:
    from activeseg.experiments.strategies import EntropyStrategy
    from activeseg.store.datastore import Datastore

    result = _run(phantom_source, tmp_path, "entropy", rounds=1, keep_work_dir=True)
    store = Datastore(tmp_path / "entropy-0" / "store")
    selection = EntropyStrategy().select(store, 2, random.Random(0))
    ranked = sorted(selection.scores, key=lambda c: -selection.scores[c])
    assert selection.strong == ranked[:2] and len(selection.scores) >= 3
    assert all(0.0 <= v <= np.log(3) + 1e-6 for v in selection.scores.values())
    assert result["rounds"][0]["selected"] and not set(result["rounds"][0]["selected"]) & set(result["rounds"][0]["labelled_cases"])


def test_mc_dropout_trains_with_dropout_and_refuses_a_network_without(runs: dict[str, dict], phantom_source: Path,
                                                                     tmp_path: Path) -> None:
    from activeseg.experiments.strategies import McDropoutStrategy
    from activeseg.store.datastore import Datastore

    assert runs["mc-dropout"]["metadata"]["config"]["network"]["dropout"] == pytest.approx(0.1)
    assert runs["random"]["metadata"]["config"]["network"]["dropout"] == 0.0
    _run(phantom_source, tmp_path, "random", rounds=0, keep_work_dir=True)
    store = Datastore(tmp_path / "random-0" / "store")
    with pytest.raises(ConfigError, match="dropout"):
        McDropoutStrategy(passes=2).select(store, 1, random.Random(0))


def test_full_labels_the_whole_pool(runs: dict[str, dict]) -> None:
    meta = runs["full"]["metadata"]
    assert all(r["labelled"] == meta["pool_size"] for r in runs["full"]["rounds"])
    assert meta["initial"] == meta["pool_size"]


def test_strategies_share_the_split_and_initial_set(runs: dict[str, dict]) -> None:
    reference = runs["random"]["metadata"]
    for name in ("dsal", "fg-random", "entropy"):
        meta = runs[name]["metadata"]
        assert meta["test_cases"] == reference["test_cases"] and meta["val_cases"] == reference["val_cases"]
        assert meta["initial_cases"] == reference["initial_cases"], name
        # same data, same seed: the same first model (trained once by dsal, reused from the cache)
        assert runs[name]["rounds"][0]["test_dice"] == pytest.approx(runs["random"]["rounds"][0]["test_dice"])
        assert runs[name]["rounds"][0]["round0_cached"] is (name != "dsal")
    assert runs["random"]["rounds"][0]["round0_cached"] is False
    assert runs["full"]["rounds"][0]["round0_cached"] is False  # full never shares: it trains on the whole pool
    # mc-dropout's network trains with dropout: another first model (same split and initial set)
    assert runs["mc-dropout"]["metadata"]["initial_cases"] == reference["initial_cases"]
    assert runs["mc-dropout"]["rounds"][0]["round0_cached"] is False


@pytest.mark.parametrize("strategy", ["mc-dropout", "fg-random"])
def test_same_seed_gives_same_selections(runs: dict[str, dict], phantom_source: Path, tmp_path: Path, strategy: str) -> None:
    again = _run(phantom_source, tmp_path, strategy)
    assert [r["selected"] for r in again["rounds"]] == [r["selected"] for r in runs[strategy]["rounds"]]
    assert [r["test_dice"]["mean"] for r in again["rounds"]] == pytest.approx([r["test_dice"]["mean"] for r in runs[strategy]["rounds"]])


def test_different_seeds_give_different_splits() -> None:
    ids = [f"case_{n:03d}" for n in range(40)]
    a, b = plan_splits(ids, 0, 0.2, 0.1, None), plan_splits(ids, 1, 0.2, 0.1, None)
    assert a.test != b.test
    assert len(a.test) == 8 and a.n_val == 4 and len(a.store) == 32 and not set(a.test) & set(a.store)
    capped = plan_splits(ids, 0, 0.2, 0.1, 10)
    assert capped.test == a.test and len(capped.store) == 4 + 10


def test_strategy_registry_and_labels() -> None:
    assert set(STRATEGIES) == {"dsal", "random", "fg-random", "entropy", "mc-dropout", "full"}
    assert get_strategy("mc-dropout", passes=3).passes == 3  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        get_strategy("uncertainty")
    assert strategy_label("dsal", True, True) == "dsal+alnt" and strategy_label("dsal", False, True) == "dsal"
    assert strategy_label("random", True, True) == "random"


def test_predictive_entropy_bounds() -> None:
    uniform = np.full((3, 2, 2, 2), 1 / 3, dtype=np.float32)
    certain = np.zeros((3, 2, 2, 2), dtype=np.float32)
    certain[0] = 1.0
    assert predictive_entropy(uniform) == pytest.approx(np.log(3), rel=1e-5)
    assert predictive_entropy(certain) == pytest.approx(0.0, abs=1e-6)


def test_random_strategy_draws_from_the_unlabelled_pool(runs: dict[str, dict]) -> None:
    # the selection is a draw without replacement: never a case that was already labelled
    for row_before, row in zip(runs["random"]["rounds"], runs["random"]["rounds"][1:]):
        assert not set(row_before["selected"]) & set(row_before["labelled_cases"])
        assert set(row_before["selected"]) <= set(row["labelled_cases"])
    assert random.Random(0).sample(range(10), 3) == random.Random(0).sample(range(10), 3)


def test_cli_simulate_and_plot_write_results_and_png(runs: dict[str, dict], phantom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "random@tiny.json"
    args = ["simulate", "--dataset", str(phantom_source), "--strategy", "random", "--rounds", "1", "--per-round", "1",
            "--initial", "2", "--test-fraction", "0.2", "--val-fraction", "0.2", "--work-dir", str(tmp_path / "w"),
            "--out", str(out), "--variant", "tiny"] + [x for item in TINY for x in ("--set", item)]
    assert main(args) == 0
    assert len(load_results(out)["rounds"]) == 2
    assert load_results(out)["metadata"]["label"] == "random@tiny" and load_results(out)["metadata"]["variant"] == "tiny"
    paths = []
    for name, result in runs.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(result))
        paths.append(str(path))
    png = tmp_path / "curves.png"
    assert main(["plot", *paths, str(out), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary_file = tmp_path / "summary.json"
    assert main(["plot", *paths, "-o", str(png), "--summary", str(summary_file)]) == 0
    summary = json.loads(summary_file.read_text())
    assert summary["reference"] == "fg-random"
    assert summary["curves"]["full"]["per_budget"][0]["labelled"] == runs["full"]["metadata"]["pool_size"]
    assert len(summary["curves"]["full"]["per_budget"]) == 1  # the ceiling is its final round only
    versus = summary["curves"]["dsal+alnt"]["versus_reference"]
    assert [p["labelled"] for p in versus["per_budget"]] == [2, 3, 4]
    assert versus["per_budget"][0]["mean"] == 0.0  # the same cached first model: no difference at the start
    curves = collect_curves([load_results(Path(p)) for p in paths])
    assert curves["random"].seeds() == [0]
    # A named variant is a curve of its own, listed after its strategy and paired with the reference like any other.
    assert main(["plot", *paths, str(out), "-o", str(png), "--summary", str(summary_file)]) == 0
    summary = json.loads(summary_file.read_text())
    assert {"random", "random@tiny"} <= set(summary["curves"]) and summary["curves"]["random@tiny"]["versus_reference"]
    assert _ordered(["full", "random@tiny", "dsal+alnt", "random", "fg-random@b", "fg-random"]) == [
        "dsal+alnt", "fg-random", "fg-random@b", "random", "random@tiny", "full"]


def test_a_variant_name_must_fit_in_a_file_name() -> None:
    assert SimulationSettings("fg-random", variant="scratch").label == "fg-random@scratch"
    assert SimulationSettings("dsal", alnt=False).label == "dsal"
    for bad in ("a/b", "", "../x", "two words"):
        with pytest.raises(ConfigError, match="variant"):
            SimulationSettings("fg-random", variant=bad)


def test_plot_prints_markdown_tables_for_results(runs: dict[str, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for name, result in runs.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(result))
        paths.append(str(path))
    assert main(["plot", *paths, "-o", str(tmp_path / "c.png"), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| curve | labelled | test Dice mean [95% CI] | seeds |" and lines[1] == "|---|---|---|---|"
    assert any(line.startswith("| dsal+alnt | 2 | ") for line in lines)


def test_cli_rejects_bad_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["plot", str(bad), "-o", str(tmp_path / "c.png")]) == 2


@pytest.mark.shared_data
def test_one_round_smoke_on_hippocampus_mri(tmp_path: Path) -> None:
    """12 real MRI volumes (MSD Task04) through one DSAL round; Dice is only checked to be a number."""
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"shared test data not found at {HIPPOCAMPUS} (it lives beside the project, never in it)")
    dataset = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    subset = {**dataset, "training": [
        {"image": str((HIPPOCAMPUS / e["image"]).resolve()), "label": str((HIPPOCAMPUS / e["label"]).resolve())}
        for e in dataset["training"][:12]
    ]}
    (tmp_path / "hippo").mkdir()
    (tmp_path / "hippo" / "dataset.json").write_text(json.dumps(subset))
    result = simulate(
        tmp_path / "hippo", "dsal", rounds=1, per_round=2, initial=2, test_fraction=0.2, val_fraction=0.1,
        overrides=["network.channels=4,8,16,16", "training.patch_size=48,64,48", "training.epochs_first=1",
                   "training.epochs_per_round=1", "training.steps_per_epoch=1", "training.num_threads=1"],
        work_dir=tmp_path / "work",
    )
    meta = result["metadata"]
    assert meta["config"]["intensity"]["mode"] == "zscore"  # MRI, from dataset.json's modality
    assert meta["n_test"] == 2 and meta["n_val"] == 1 and meta["pool_size"] == 9
    assert set(result["rounds"][0]["test_dice"]) == {"Anterior", "Posterior", "mean"}
    assert [r["labelled"] for r in result["rounds"]] == [2, 4]


def test_evaluate_test_split_is_exact_on_a_perfect_prediction(phantom_source: Path) -> None:
    """Dice 1 when the model's argmax equals the truth (a stub model returning one-hot logits)."""
    import torch

    from activeseg.config import Config
    from activeseg.io.volumes import read_volume
    from activeseg.model.network import DeepSupervisionOutput
    from activeseg.model.plan import Plan
    from activeseg.model.predictor import Predictor

    dataset = json.loads((phantom_source / "dataset.json").read_text())
    entry = dataset["training"][0]
    image_path, label_path = phantom_source / entry["image"], phantom_source / entry["label"]
    truth = torch.from_numpy(read_volume(label_path, dtype=np.uint8).array.astype(np.int64))

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> DeepSupervisionOutput:  # the crop's truth, found by position
            logits = torch.nn.functional.one_hot(self.crop, 3).permute(3, 0, 1, 2)[None].float() * 10
            return DeepSupervisionOutput(logits, logits, logits)

    config = Config()
    config.labels = {1: "lung", 2: "lesion"}
    spacing = tuple(reversed(read_volume(image_path).geometry.spacing))  # the plan keeps the image's own grid
    plan = Plan(spacing, tuple(int(s) for s in truth.shape), [(2, 2, 2)] * 2, (4, 8, 8), 1, "zscore")
    model = Oracle()
    model.crop = truth
    result = evaluate_test_split(Predictor(model, plan, torch.device("cpu"), amp=False), [("p0", image_path, label_path)], config)
    assert result["mean"] == pytest.approx(1.0)
