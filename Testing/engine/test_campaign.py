"""Issue 11: a campaign of simulations in parallel processes, resumable, one results file per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activeseg.cli.main import main
from activeseg.cli.simulate import _ORDER
from activeseg.experiments.campaign import STRATEGY_VARIANTS, ceiling_steps, plan_campaign
from activeseg.experiments.simulation import SimulationSettings

TINY = ["network.channels=4,8,16,16", "training.patch_size=16,32,32", "training.epochs_first=1",
        "training.epochs_per_round=1", "training.steps_per_epoch=2", "training.num_threads=1"]


def test_the_cli_offers_exactly_the_campaign_labels() -> None:
    assert list(STRATEGY_VARIANTS) == list(_ORDER)


def test_plan_orders_runs_so_two_workers_start_different_seeds(tmp_path: Path) -> None:
    base = SimulationSettings(strategy="random", rounds=3, per_round=4, initial=4)
    runs = plan_campaign(["fg-random", "dsal+alnt", "full"], [0, 1, 2], base, tmp_path)
    names = [run.name for run in runs]
    assert names[:4] == ["fg-random-seed0", "fg-random-seed1", "dsal+alnt-seed0", "dsal+alnt-seed1"]
    assert names[-3:] == ["fg-random-seed2", "dsal+alnt-seed2", "full-seed2"] and len(names) == 9
    by_name = {run.name: run.settings for run in runs}
    assert by_name["dsal+alnt-seed1"].strategy == "dsal" and by_name["dsal+alnt-seed1"].alnt
    assert by_name["full-seed0"].rounds == 0 and by_name["fg-random-seed0"].rounds == 3
    assert all(run.settings.round0_cache == tmp_path / "round0" for run in runs)
    with pytest.raises(ValueError, match="unknown"):
        plan_campaign(["uncertainty"], [0], base, tmp_path)
    # A named variant (an ablation) gets files and curve labels of its own beside the plain runs.
    scratch = SimulationSettings(strategy="random", variant="scratch", overrides=("training.warm_start=false",))
    runs = plan_campaign(["fg-random", "dsal"], [0], scratch, tmp_path)
    assert [run.name for run in runs] == ["fg-random@scratch-seed0", "dsal@scratch-seed0"]
    assert runs[1].settings.label == "dsal@scratch" and not runs[1].settings.alnt


def test_the_ceiling_trains_as_long_as_a_warm_started_curve(tmp_path: Path) -> None:
    warm = SimulationSettings(strategy="random", rounds=2, per_round=4, initial=4, overrides=(
        "training.warm_start=true", "training.steps_base=100", "training.steps_per_label=10", "training.max_steps=1000"))
    assert ceiling_steps(warm) == (100 + 40) + (100 + 80) + (100 + 120)
    full = next(run for run in plan_campaign(["full"], [0], warm, tmp_path))
    assert "training.steps_base=540" in full.settings.overrides and "training.steps_per_label=0" in full.settings.overrides
    scratch = SimulationSettings(strategy="random", overrides=("training.warm_start=false",))
    assert ceiling_steps(scratch) is None  # from scratch: the budget rule as it is
    assert ceiling_steps(SimulationSettings(strategy="random")) is not None  # fine-tuning is the default


def test_campaign_runs_in_parallel_and_resumes(phantom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = ["simulate", "--dataset", str(phantom_source), "--strategies", "random", "full", "--seeds", "0", "1",
            "--jobs", "2", "--out-dir", str(out), "--rounds", "1", "--per-round", "1", "--initial", "2",
            "--test-fraction", "0.2", "--val-fraction", "0.2", "--no-progress"] + [x for s in TINY for x in ("--set", s)]
    assert main(args) == 0
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == ["full-seed0.json", "full-seed1.json", "random-seed0.json", "random-seed1.json"]
    first = json.loads((out / "random-seed0.json").read_text())
    assert [r["labelled"] for r in first["rounds"]] == [2, 3] and (out / "logs" / "random-seed0.log").stat().st_size > 0
    # interrupted campaign: one results file lost -> only that run is done again
    (out / "random-seed1.json").unlink()
    stamp = (out / "random-seed0.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "random-seed1.json").is_file() and (out / "random-seed0.json").stat().st_mtime_ns == stamp


def test_campaign_needs_strategies_and_one_run_needs_out(phantom_source: Path, tmp_path: Path) -> None:
    assert main(["simulate", "--dataset", str(phantom_source), "--out-dir", str(tmp_path)]) == 2
    assert main(["simulate", "--dataset", str(phantom_source), "--strategy", "random"]) == 2


def test_runs_of_one_seed_wait_for_its_round0_model_so_they_share_it(phantom_source: Path, tmp_path: Path) -> None:
    """With more workers than seeds, a seed's strategies must not each train their own round-0 model at once (the
    paired comparison at the first budget assumes one shared model): the first run of a seed trains it, the others
    start once its round 0 is cached."""
    out = tmp_path / "runs"
    args = ["simulate", "--dataset", str(phantom_source), "--strategies", "random", "fg-random", "entropy",
            "--seeds", "0", "--jobs", "3", "--out-dir", str(out), "--rounds", "0", "--per-round", "1", "--initial", "2",
            "--test-fraction", "0.2", "--val-fraction", "0.2", "--no-progress"] + [x for s in TINY for x in ("--set", s)]
    assert main(args) == 0
    round0 = {name: json.loads((out / f"{name}-seed0.json").read_text())["rounds"][0]
              for name in ("random", "fg-random", "entropy")}
    assert sorted(r["round0_cached"] for r in round0.values()) == [False, True, True]
    assert len({json.dumps(r["test_dice"], sort_keys=True) for r in round0.values()}) == 1
    assert len(list((out / "round0").glob("round0-*.pt"))) == 1
