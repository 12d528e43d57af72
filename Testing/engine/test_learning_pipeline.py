"""The learning pipeline's parts: plan, preprocessing and its inverse, the case cache, crops and augmentation,
the predictor's geometry, and ALNT's exactness on planned (anisotropic, deeper) networks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.func import functional_call

from activeseg.config import AlntConfig, Config, apply_overrides
from activeseg.errors import ConfigError
from activeseg.io.volumes import Geometry, Volume
from activeseg.method.alnt import compute_alnt_weights
from activeseg.model.case_cache import CaseCache, source_key
from activeseg.model.loss import DeepSupervisionLoss
from activeseg.model.network import build_network
from activeseg.model.plan import CaseStatistics, Plan, fingerprint_of, make_plan, override_plan, target_spacing_of
from activeseg.model.predictor import Predictor
from activeseg.model.preprocessing import normalise, resample_to_grid, resample_volume
from activeseg.model.sampling import CropBatch, CropStream

OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # i along -y, j along +x: a rotated LPS grid


def _stats(spacing: tuple[float, float, float], shape: tuple[int, int, int], samples: np.ndarray | None = None) -> CaseStatistics:
    return CaseStatistics(spacing, shape, np.zeros(0, np.float32) if samples is None else samples, [100, 10, 1])


def test_target_spacing_is_the_median_and_anisotropic_axes_take_a_low_percentile() -> None:
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 0.8, 0.8], [0.9, 1.1, 1.0]])
    assert target_spacing_of(iso)[0] == (1.0, 1.0, 1.0)
    thick = np.array([[5.0, 0.7, 0.7], [5.0, 0.8, 0.8], [1.25, 0.7, 0.7], [5.0, 0.75, 0.75], [3.0, 0.7, 0.7]])
    spacing, note = target_spacing_of(thick)
    assert spacing[1:] == (0.7, 0.7)
    assert spacing[0] == pytest.approx(float(np.percentile(thick[:, 0], 10))) and spacing[0] < 5.0
    assert note and "anisotropic" in note


def test_plan_fits_the_budget_with_strides_that_divide_the_patch() -> None:
    fingerprint = fingerprint_of([_stats((5.0, 0.7, 0.7), (60, 512, 512))] * 3, "ct")
    plan = make_plan(fingerprint, max_patch_voxels=64**3)
    assert np.prod(plan.patch_size) <= 64**3
    assert all(p % t == 0 for p, t in zip(plan.patch_size, plan.total_stride))
    assert plan.strides[0][0] == 1, "the 5 mm axis is not down-sampled while in-plane is 7x finer"
    assert len(plan.channels) == len(plan.strides) + 1 >= 3
    assert plan.channels[0] == 16 and max(plan.channels) <= 256
    small = make_plan(fingerprint_of([_stats((1.0, 1.0, 1.0), (36, 50, 35))] * 3, "mri"))
    assert small.patch_size == (40, 56, 40) and small.normalisation == "zscore"  # nnU-Net's hippocampus patch


def test_ct_normalisation_uses_the_foreground_percentiles_mean_and_sd() -> None:
    samples = np.linspace(-100.0, 300.0, 1001, dtype=np.float32)
    plan = make_plan(fingerprint_of([_stats((1.0, 1.0, 1.0), (32, 32, 32), samples)], "ct"))
    low, high = np.percentile(samples, [0.5, 99.5])
    assert plan.clip == pytest.approx((low, high)) and plan.mean == pytest.approx(100.0, abs=1e-3)
    out = normalise(np.array([-1000.0, 100.0, 3000.0]), plan)
    assert out[1] == pytest.approx(0.0, abs=1e-5)
    assert out[0] == pytest.approx((low - 100.0) / plan.sd, rel=1e-5) and out[2] == pytest.approx((high - 100.0) / plan.sd, rel=1e-5)


def test_user_overrides_replace_planned_values_and_bad_patches_are_refused() -> None:
    plan = make_plan(fingerprint_of([_stats((1.0, 1.0, 1.0), (36, 50, 35))], "mri"))
    changed = override_plan(plan, patch_size=(16, 32, 32), channels=(4, 8, 16), batch_size=3)
    assert changed.patch_size == (16, 32, 32) and changed.channels == (4, 8, 16) and len(changed.strides) == 2
    assert changed.batch_size == 3
    with pytest.raises(ConfigError, match="multiple of the network's total stride"):
        override_plan(plan, patch_size=(18, 32, 32), channels=(4, 8, 16, 32))
    with pytest.raises(ConfigError, match="at least 3 levels"):
        apply_overrides(Config(), ["network.channels=4,8"])
    assert apply_overrides(Config(), ["training.target_spacing=2.5,0.8,0.8"]).training.target_spacing == (2.5, 0.8, 0.8)


def _oblique_volume(shape: tuple[int, int, int], spacing_ijk: tuple[float, float, float], seed: int = 0) -> tuple[Volume, Volume]:
    """An image and label with an off-axis ellipsoid on a rotated, anisotropic LPS grid."""
    k, j, i = np.indices(shape)
    centre = np.array(shape) / 2
    radius = np.array(shape) / 3.5
    inside = (((k - centre[0]) / radius[0]) ** 2 + ((j - centre[1]) / radius[1]) ** 2 + ((i - centre[2]) / radius[2]) ** 2) <= 1
    label = inside.astype(np.uint8)
    label[inside & (i > centre[2])] = 2
    rng = np.random.default_rng(seed)
    image = (label * 100.0 + rng.normal(0, 5, shape)).astype(np.float32)
    geometry = Geometry(size=(shape[2], shape[1], shape[0]), spacing=spacing_ijk, origin=(-12.5, 40.0, 7.25), direction=OBLIQUE)
    return Volume(image, geometry), Volume(label, geometry)


def test_resampling_round_trip_keeps_geometry_and_labels() -> None:
    image, label = _oblique_volume((12, 40, 36), (0.8, 0.8, 3.0))
    planned = resample_volume(label, (1.5, 1.6, 1.6), is_label=True)
    assert planned.geometry.spacing == (1.6, 1.6, 1.5) and planned.geometry.direction == OBLIQUE
    assert planned.geometry.origin == label.geometry.origin
    back = resample_to_grid(planned.array, planned.geometry, label.geometry, is_label=True)
    assert back.shape == label.array.shape and back.dtype == np.uint8
    for value in (1, 2):
        a, b = back == value, label.array == value
        assert 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) > 0.85
    same = resample_volume(image, (3.0, 0.8, 0.8), is_label=False)
    assert same is image, "a volume already at the planned spacing is used as it is"


def test_predictions_come_back_on_the_source_grid_exactly(tmp_path) -> None:
    image, _ = _oblique_volume((12, 40, 36), (0.8, 0.8, 3.0))
    plan = Plan((1.5, 1.6, 1.6), (8, 16, 16), [(2, 2, 2), (2, 2, 2)], (4, 8, 8), 2, "zscore")
    torch.manual_seed(0)
    predictor = Predictor(build_network(3, plan.channels, 0.0, strides=plan.strides).eval(), plan, torch.device("cpu"), amp=False)
    heads = predictor.predict(image)
    assert heads.main.shape == (3, *image.array.shape)
    np.testing.assert_allclose(heads.main.sum(axis=0), 1.0, atol=1e-4)
    planned = predictor.predict(image, on_source_grid=False)
    assert planned.main.shape[1:] != image.array.shape
    segmentation = predictor.segment(image)
    written = tmp_path / "prediction.nrrd"  # NRRD keeps geometry in double precision, as .seg.nrrd does
    sitk.WriteImage(image.geometry.apply_to(sitk.GetImageFromArray(segmentation)), str(written))
    assert Geometry.of(sitk.ReadImage(str(written))) == image.geometry


def test_case_cache_is_reused_and_replaced_when_the_label_changes(tmp_path) -> None:
    image, label = _oblique_volume((12, 40, 36), (0.8, 0.8, 3.0))
    image_file, label_file = tmp_path / "image.nii.gz", tmp_path / "label.nii.gz"
    for volume, path in ((image, image_file), (label, label_file)):
        sitk.WriteImage(volume.geometry.apply_to(sitk.GetImageFromArray(volume.array)), str(path))
    cache, calls = CaseCache(tmp_path / "cache"), []

    def load_image() -> Volume:
        calls.append("image")
        return image

    first = cache.get("c1", source_key(image_file, label_file), (3.0, 1.6, 1.6), load_image, lambda: label, 3)
    again = cache.get("c1", source_key(image_file, label_file), (3.0, 1.6, 1.6), load_image, lambda: label, 3)
    assert calls == ["image"], "a second get reads the cache, not the source"
    assert isinstance(first.image, np.memmap) and first.image.shape == again.image.shape
    assert set(first.locations) == {1, 2}
    for value, voxels in first.locations.items():
        assert (np.asarray(first.label)[tuple(voxels.T)] == value).all()
    edited = Volume(np.where(label.array == 2, 1, label.array).astype(np.uint8), label.geometry)
    sitk.WriteImage(edited.geometry.apply_to(sitk.GetImageFromArray(edited.array)), str(label_file))
    fresh = cache.get("c1", source_key(image_file, label_file), (3.0, 1.6, 1.6), load_image, lambda: edited, 3)
    assert set(fresh.locations) == {1} and calls == ["image", "image"]
    entries = [p for p in (tmp_path / "cache").glob("*/c1/*") if not p.name.startswith(".")]
    assert len(entries) == 1, "the stale entry of the old label is removed"


def _stream_batches(cases, plan, seed: int, n: int = 3) -> list[CropBatch]:
    stream = iter(CropStream(cases, plan, 2, seed, foreground_fraction=0.5, augment=True))
    return [next(stream) for _ in range(n)]


def test_crops_and_augmentation_are_repeatable_under_a_seed(tmp_path) -> None:
    image, label = _oblique_volume((12, 40, 36), (0.8, 0.8, 3.0))
    cache = CaseCache(tmp_path / "cache")
    case = cache.get("c1", "k", (3.0, 0.8, 0.8), lambda: image, lambda: label, 3)
    plan = Plan((3.0, 0.8, 0.8), (16, 32, 32), [(1, 2, 2), (2, 2, 2)], (4, 8, 8), 2, "zscore")
    first, same, other = _stream_batches([case], plan, 7), _stream_batches([case], plan, 7), _stream_batches([case], plan, 8)
    for (a, la, oa), (b, lb, ob) in zip(first, same):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
        assert oa == ob
    assert any(not torch.equal(a.images, b.images) for a, b in zip(first, other))
    images, labels, _ = first[0]
    assert images.shape == (2, 1, 16, 32, 32) and labels.dtype == torch.int64
    assert set(torch.unique(labels).tolist()) <= {0, 1, 2}
    # the volume (12 slices) is smaller than the patch (16): the padding is the volume's lowest normalised value
    unaugmented = next(iter(CropStream([case], plan, 1, 0, foreground_fraction=0.0, augment=False)))[0]
    lowest = (float(np.asarray(case.image).min()) - case.mean) / case.sd
    assert float(unaugmented.min()) == pytest.approx(lowest, rel=1e-4)


def test_each_crop_carries_its_origin_on_the_planned_grid(tmp_path) -> None:
    """Issue 11: a pseudo crop's ALNT weight is related to its true Dice through the crop's origin."""
    image, label = _oblique_volume((20, 40, 36), (0.8, 0.8, 3.0))
    cache = CaseCache(tmp_path / "cache")
    case = cache.get("c1", "k", (3.0, 0.8, 0.8), lambda: image, lambda: label, 3)
    plan = Plan((3.0, 0.8, 0.8), (16, 32, 32), [(1, 2, 2), (2, 2, 2)], (4, 8, 8), 2, "zscore")
    stream = iter(CropStream([case], plan, 2, 5, foreground_fraction=0.5, augment=False))
    for _ in range(3):
        batch = next(stream)
        assert len(batch.origins) == 2 and batch.images.shape[0] == 2
        for crop_label, origin in zip(batch.labels, batch.origins):
            assert origin.case_id == "c1"
            box = np.asarray(case.label)[origin.slices()]
            assert box.shape == (16, 32, 32)  # the volume is larger than the patch: no padding
            np.testing.assert_array_equal(crop_label[0].numpy(), box)


@pytest.mark.parametrize("strides", [[(1, 2, 2), (2, 2, 2), (2, 2, 2)], [(2, 2, 2), (2, 2, 2)]])
def test_alnt_dot_products_are_exact_on_planned_networks(strides) -> None:
    """RGS by one jvp equals explicit per-sample gradient dot products, also on anisotropic and 3-level networks."""
    torch.manual_seed(0)
    channels = (4, 6, 8, 8)[: len(strides) + 1]
    model = build_network(3, channels, 0.0, strides=strides).double()
    shape = (8, 16, 16)
    loss = DeepSupervisionLoss(torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64))
    expert = (torch.randn(2, 1, *shape, dtype=torch.float64), torch.randint(0, 3, (2, 1, *shape)))
    pseudo = (torch.randn(3, 1, *shape, dtype=torch.float64), torch.randint(0, 3, (3, 1, *shape)))
    result = compute_alnt_weights(model, *expert, *pseudo, AlntConfig(lambda_=1.0, rectify=False), loss=loss)
    params = dict(model.named_parameters())
    g = torch.autograd.grad(loss.mean(model(expert[0]), expert[1]), list(params.values()))
    dots = []
    for i in range(3):
        grads = torch.autograd.grad(loss.per_sample(functional_call(model, params, (pseudo[0][i : i + 1],)), pseudo[1][i : i + 1]).sum(),
                                    list(params.values()))
        dots.append(sum(float((a * b).sum()) for a, b in zip(grads, g)))
    expected = torch.clamp(torch.tensor(dots, dtype=torch.float64), min=0)
    expected = expected / expected.sum() if expected.sum() > 0 else expected
    torch.testing.assert_close(result.rgs.double(), expected, rtol=1e-6, atol=1e-9)


def test_mirroring_is_planned_only_where_mirrored_classes_keep_their_meaning() -> None:
    from monai.transforms import RandFlipd

    from activeseg.model.plan import mirror_axes_for
    from activeseg.model.sampling import build_augmentation

    assert mirror_axes_for(1, "auto") == (0, 1, 2)  # a lesion mirrored is still a lesion
    assert mirror_axes_for(2, "auto") == ()  # anterior/posterior or left/right parts would swap meaning
    assert mirror_axes_for(2, "on", (2,)) == (2,) and mirror_axes_for(1, "off") == ()
    plan = Plan((1.0, 1.0, 1.0), (16, 16, 16), [(2, 2, 2)] * 2, (4, 8, 8), 2, "zscore", mirror_axes=(2,))
    flips = [t for t in build_augmentation(plan).transforms if isinstance(t, RandFlipd)]
    assert [t.flipper.spatial_axis for t in flips] == [2]
    assert Plan.from_dict(plan.to_dict()).mirror_axes == (2,)
    with pytest.raises(ConfigError, match="mirroring"):
        apply_overrides(Config(), ["training.mirroring=sometimes"])
