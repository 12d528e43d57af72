"""Ranking with bounded memory gives the scores, label maps and uncertainty maps of the whole-volume computation.

The references here are written from ``../shared/ALGORITHMS.md`` (DSAL) and the uncertainty map's definition, on
the heads' whole probability volumes from MONAI's ``sliding_window_inference`` (Gaussian blending, softmax per
head, test-time flips averaged after softmax), the way ranking computed them before it streamed slabs
(:func:`activeseg.model.predictor.stream_heads`, :class:`activeseg.method.dsal.RankingAccumulator`).
Tolerances: none for label maps, M-DSC, foreground counts and uncertainty maps without a flip along k; 1e-6 for the
confidence (summed in float64 instead of numpy's float32 mean) and for probabilities of a pass mirrored along k
(its windows run in reverse order, so its sums round differently).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from activeseg.config import apply_overrides
from activeseg.io.atomic import TEMP_MARKER
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.io.spill import ArraySpill
from activeseg.io.volumes import read_volume
from activeseg.method.dsal import CaseScore, RankingAccumulator, route_cases, weak_quota
from activeseg.method.uncertainty_map import UNCERTAINTY_SCALE, uncertainty_map_path
from activeseg.model.network import build_network
from activeseg.model.predictor import Predictor, load_checkpoint, stream_heads
from activeseg.pipeline.ranking_round import rank_round
from activeseg.pipeline.training_round import train_round
from activeseg.store.datastore import Datastore

from .conftest import image_pairs, tiny_config

CPU = torch.device("cpu")


# ---------------------------------------------------------------- references, from the definitions

def reference_heads(model: torch.nn.Module, image: np.ndarray, patch: tuple[int, int, int], pad: float,
                    flips: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Softmax (C, k, j, i) of main, half, quarter: MONAI Gaussian sliding windows over the whole volume (overlap
    0.5, two windows per call), softmax over classes, mirrored passes flipped back and averaged."""
    tensor = torch.from_numpy(image)[None, None]
    total = None
    with torch.no_grad():
        for flip in (None, *flips):
            dims = [] if flip is None else [2 + flip]
            source = torch.flip(tensor, dims) if dims else tensor
            logits = sliding_window_inference(source, patch, 2, lambda x: tuple(o.float() for o in model(x)),
                                              overlap=0.5, mode="gaussian", cval=pad)
            probabilities = [torch.softmax(o, dim=1) for o in logits]
            if dims:
                probabilities = [torch.flip(p, dims) for p in probabilities]
            total = probabilities if total is None else [t + p for t, p in zip(total, probabilities)]
    assert total is not None
    return [(t[0] / (1 + len(flips))).numpy() for t in total]


def reference_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """ALGORITHMS.md: Dice averaged over the foreground classes; a class absent from both is not counted; two
    empty masks agree (1)."""
    values = []
    for c in range(1, num_classes):
        total = int((a == c).sum()) + int((b == c).sum())
        if total:
            values.append(2.0 * int(((a == c) & (b == c)).sum()) / total)
    return float(np.mean(values)) if values else 1.0


def reference_scores(heads: list[np.ndarray], num_classes: int) -> tuple[float, float, int, np.ndarray]:
    """(M-DSC, confidence, foreground voxels, main label map) from the three heads' whole volumes."""
    main, half, quarter = (p.argmax(axis=0) for p in heads)
    m_dsc = float(np.mean([reference_dice(main, aux, num_classes) for aux in (half, quarter)]))
    return m_dsc, float(heads[0].max(axis=0).mean()), int((main > 0).sum()), main.astype(np.uint8)


def reference_uncertainty(heads: list[np.ndarray]) -> np.ndarray:
    """max(mean total-variation distance main vs each auxiliary head, main-head entropy / log C)."""
    main, half, quarter = (p.astype(np.float64) for p in heads)
    disagreement = 0.5 * (0.5 * np.abs(main - half).sum(0) + 0.5 * np.abs(main - quarter).sum(0))
    entropy = -(main * np.log(np.clip(main, 1e-12, 1.0))).sum(0) / np.log(main.shape[0])
    return np.maximum(np.clip(disagreement, 0, 1), np.clip(entropy, 0, 1))


def streamed(model: torch.nn.Module, image: np.ndarray, patch: tuple[int, int, int], pad: float,
             flips: tuple[int, ...] = ()) -> tuple[list[np.ndarray], list[int]]:
    slabs = list(stream_heads(model, image, patch, CPU, amp=False, pad=pad, tta_flips=flips))
    heads = [np.concatenate([getattr(s, name) for s in slabs], axis=1) for name in ("main", "half", "quarter")]
    return heads, [s.start for s in slabs]


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(3, (4, 8, 16, 16), 0.0).eval()


# ---------------------------------------------------------------- the streamed sliding window

@pytest.mark.parametrize("shape", [(40, 33, 32), (20, 40, 36), (11, 25, 30), (8, 16, 16)])
def test_streamed_slabs_equal_the_whole_volume_bitwise(network: torch.nn.Module, shape: tuple[int, int, int]) -> None:
    """Multi-slab volumes, volumes smaller than the window on an axis (odd padding) and a single window."""
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    patch = (8, 16, 16)
    heads, starts = streamed(network, image, patch, pad=-1.5)
    reference = reference_heads(network, image, patch, pad=-1.5)
    for got, expected in zip(heads, reference):
        assert got.shape == expected.shape
        assert np.array_equal(got, expected)
    assert starts == sorted(set(starts)) and starts[0] == 0
    if shape[0] > 2 * patch[0]:
        assert len(starts) > 2  # really streamed, not one slab at the end


@pytest.mark.parametrize("flips", [(1, 2), (0,), (0, 1, 2)])
def test_streamed_test_time_flips_match(network: torch.nn.Module, flips: tuple[int, ...]) -> None:
    image = np.random.default_rng(2).normal(size=(21, 25, 30)).astype(np.float32)
    patch = (8, 16, 16)
    heads, _ = streamed(network, image, patch, pad=0.5, flips=flips)
    reference = reference_heads(network, image, patch, pad=0.5, flips=flips)
    for got, expected in zip(heads, reference):
        if 0 in flips:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        else:
            assert np.array_equal(got, expected)


def test_streaming_holds_about_one_window_depth(network: torch.nn.Module) -> None:
    """Slabs come out while the windows move down the volume: the first arrives long before the last window."""
    image = np.zeros((64, 16, 16), np.float32)
    seen: list[int] = []
    calls = {"n": 0}

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            return network(x)

    for slab in stream_heads(Counting(), image, (8, 16, 16), CPU, amp=False):
        seen.append(calls["n"])
        assert slab.main.shape[1] <= 8
    # 15 windows along k, two per network call: a slab after every call.
    assert seen == list(range(1, calls["n"] + 1)) and calls["n"] == 8


# ---------------------------------------------------------------- running DSAL statistics

@pytest.mark.parametrize("cuts", [[0, 12], [0, 1, 5, 9, 12], [0, 3, 4, 12]])
def test_accumulated_scores_equal_the_definition(cuts: list[int]) -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4, 12, 9, 7)).astype(np.float32) * 3
    heads = [torch.softmax(torch.from_numpy(x), dim=0).numpy() for x in logits[:3]]
    heads[2][:, :, :4] = heads[0][:, :, :4]  # partial agreement
    statistics = RankingAccumulator((12, 9, 7), 4)
    order = list(zip(cuts[:-1], cuts[1:]))[::-1]  # any order of slabs
    for start, stop in order:
        statistics.add(start, *(h[:, start:stop] for h in heads))
    m_dsc, conf, foreground, main = reference_scores(heads, 4)
    score = statistics.score("c")
    assert score.mdsc == m_dsc
    assert score.foreground_voxels == foreground
    assert abs(score.confidence - conf) < 1e-6
    assert np.array_equal(statistics.main_labels, main)


def test_accumulated_empty_masks_agree_and_missing_slices_are_refused() -> None:
    background = np.zeros((2, 4, 3, 3), np.float32)
    background[0] = 1.0
    statistics = RankingAccumulator((4, 3, 3), 2)
    statistics.add(0, *(background[:, :2],) * 3)
    with pytest.raises(ValueError):
        statistics.score("c")
    statistics.add(2, *(background[:, 2:],) * 3)
    assert statistics.score("c") == CaseScore("c", 1.0, 1.0, 0)


def test_array_spill_round_trip_and_cleanup(tmp_path: Path) -> None:
    spill = ArraySpill(tmp_path)
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    spill["a"] = labels
    spill["a"] = labels + 1
    assert "a" in spill and "b" not in spill and len(spill) == 1
    assert np.array_equal(spill["a"], labels + 1)
    assert spill.folder.name.startswith(TEMP_MARKER)
    spill.close()
    assert not spill.folder.exists()
    dropped = ArraySpill(tmp_path)
    folder = dropped.folder
    dropped["x"] = labels
    del dropped  # garbage-collected: removed too
    assert not folder.exists()


# ---------------------------------------------------------------- the ranking round end to end

@pytest.fixture()
def ranked_store(phantom_source: Path, tmp_path: Path) -> Datastore:
    """A trained tiny model whose 8x16x16 window slides over the 16x32x32 phantoms (several slabs per case)."""
    config = apply_overrides(tiny_config(), ["training.patch_size=8,16,16"])
    store, _ = Datastore.create(tmp_path / "store", image_pairs(phantom_source), config, seed=1)
    for case_id in [c.case_id for c in store.cases(split="val")] + [c.case_id for c in store.cases(split="train")][:4]:
        store.submit_label(case_id, read_volume(phantom_source / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8),
                           no_finding=True)
    train_round(store)
    return store


def test_rank_round_scores_and_pseudo_labels_equal_the_whole_volume_reference(ranked_store: Datastore) -> None:
    store = ranked_store
    version = store.active_version()
    assert version is not None
    model, plan = load_checkpoint(store.model(version).weights_path, CPU)
    assert plan.patch_size == (8, 16, 16)
    predictor = Predictor(model, plan, CPU, amp=False)
    num_classes = store.config.num_classes

    result = rank_round(store)

    scores = {s.case_id: s for s in result.scores}
    expected_scores, main_maps = [], {}
    for case_id in scores:
        volume = store.load_image(case_id)
        image, planned, pad = predictor.prepare(volume)
        assert planned == volume.geometry  # phantoms are at the plan's spacing: no resampling in the comparison
        heads = reference_heads(model, image, plan.patch_size, pad)
        m_dsc, conf, foreground, main_maps[case_id] = reference_scores(heads, num_classes)
        assert scores[case_id].mdsc == m_dsc
        assert scores[case_id].foreground_voxels == foreground
        assert abs(scores[case_id].confidence - conf) < 1e-6
        expected_scores.append(CaseScore(case_id, m_dsc, conf, foreground))
        written = read_volume(uncertainty_map_path(store.meta_dir, case_id), dtype=np.uint8).array
        expected = np.rint(reference_uncertainty(heads) * UNCERTAINTY_SCALE)
        assert np.abs(written.astype(int) - expected).max() <= 1  # float32 vs float64 reference: rounding at .5 only
        assert np.mean(written == expected) > 0.999

    quota = weak_quota(int(store.model(version).metrics.get("round", version)), store.config.dsal)
    strong, weak = route_cases(expected_scores, store.config.dsal.strong_per_round, quota, store.config.dsal, set(scores))
    assert (result.strong, result.weak) == (strong, weak)
    assert result.weak, "the tiny round writes pseudo-labels (weak_start_round=1)"
    for case_id in result.weak:
        [path] = (store.meta_dir / "pseudo").glob(f"{case_id}.*.seg.nrrd")
        assert np.array_equal(read_segmentation_labelmap(path, store.config.labels).array, main_maps[case_id])
    for case_id in result.strong:
        prediction = read_segmentation_labelmap(store.prediction_path(case_id, version), store.config.labels).array
        assert np.array_equal(prediction, main_maps[case_id])
    assert not list(store.meta_dir.glob(f"{TEMP_MARKER}spill-*"))  # the candidates' maps on disk are gone
