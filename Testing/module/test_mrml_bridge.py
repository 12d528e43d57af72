"""MRML bridge against the real MRML libraries (slicer-core): geometry, segments, submissions, bad input."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
slicerio = pytest.importorskip("slicerio")
pytest.importorskip("slicer")

import slicer  # noqa: E402

from ActiveSegLib import MrmlBridgeError  # noqa: E402
from ActiveSegLib import fileformats, mrml  # noqa: E402

LABELS = {1: "lung", 2: "lesion"}
SHAPE_KJI = (9, 11, 13)
SPACING = (0.7, 0.9, 2.5)  # (i, j, k) mm
ORIGIN_LPS = (-120.5, 33.25, 410.0)


def rotation_lps() -> np.ndarray:
    """A rotation about z (30 deg) then x (10 deg): columns are the I, J, K directions in LPS."""
    a, b = math.radians(30), math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rx @ rz


def make_image(values: np.ndarray | None = None, spacing=SPACING, origin=ORIGIN_LPS) -> Any:
    """A SimpleITK image (LPS) with anisotropic spacing, a rotated direction and an offset origin."""
    if values is None:
        values = (np.arange(np.prod(SHAPE_KJI)).reshape(SHAPE_KJI) % 1000 - 500).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation_lps().flatten().tolist())
    return image


def expected_ijk_to_ras(image: Any) -> np.ndarray:
    """The image's IJK-to-RAS: SimpleITK's IJK-to-LPS with the first two rows negated."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return mrml.RAS_TO_LPS @ lps


def image_bytes(tmp_path: Path, image: Any, suffix: str) -> bytes:
    path = tmp_path / f"source{suffix}"
    sitk.WriteImage(image, str(path), useCompression=suffix != ".nii")
    return path.read_bytes()


def node_count(ctx: Any, class_name: str = "vtkMRMLNode") -> int:
    return ctx.scene.GetNumberOfNodesByClass(class_name)


def test_headless_context_has_a_working_segmentations_logic(ctx: Any) -> None:
    assert ctx.scene.IsA("vtkMRMLScene")
    assert ctx.segmentations_logic.GetMRMLScene() is ctx.scene


# ----------------------------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_volume_from_bytes_keeps_geometry_and_voxels(ctx: Any, tmp_path: Path, suffix: str) -> None:
    image = make_image()
    node = mrml.volume_node_from_bytes(ctx, image_bytes(tmp_path, image, suffix), suffix, "ct")

    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert node.GetName() == "ct"
    np.testing.assert_allclose(mrml.ijk_to_ras_matrix(node), expected_ijk_to_ras(image), atol=1e-5)
    np.testing.assert_allclose(mrml.ijk_to_lps_matrix(node)[:3, 3], ORIGIN_LPS, atol=1e-5)
    assert mrml.grid_shape_kji(node) == SHAPE_KJI
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    # Shown in Slicer (display node), but no storage node pointing at the deleted temp file.
    assert node.GetDisplayNode() is not None
    assert node.GetStorageNode() is None
    assert node_count(ctx, "vtkMRMLStorageNode") == 0


def test_volume_from_bytes_accepts_suffix_without_dot_and_makes_names_unique(ctx: Any, tmp_path: Path) -> None:
    data = image_bytes(tmp_path, make_image(), ".nrrd")
    first = mrml.volume_node_from_bytes(ctx, data, "nrrd", "ct")
    second = mrml.volume_node_from_bytes(ctx, data, ".NRRD", "ct")
    assert first.GetName() == "ct" and second.GetName() != "ct"


def test_volume_from_file_keeps_its_storage_node(ctx: Any, tmp_path: Path) -> None:
    image = make_image()
    path = tmp_path / "case_007.nii.gz"
    sitk.WriteImage(image, str(path))
    node = mrml.volume_node_from_file(ctx, path)
    assert node.GetName() == "case_007"
    assert Path(node.GetStorageNode().GetFileName()) == path
    np.testing.assert_allclose(mrml.ijk_to_ras_matrix(node), expected_ijk_to_ras(image), atol=1e-5)


def test_volume_from_file_as_labelmap(ctx: Any, tmp_path: Path) -> None:
    path = tmp_path / "label.nrrd"
    sitk.WriteImage(make_image(np.ones(SHAPE_KJI, np.uint8)), str(path))
    node = mrml.volume_node_from_file(ctx, path, "lab", labelmap=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")


def test_volume_reader_ignores_neighbouring_files_of_a_series(ctx: Any, tmp_path: Path) -> None:
    # Without SingleFile the archetype reader may stack img_001/img_002 into one volume.
    for index in (1, 2):
        sitk.WriteImage(make_image(), str(tmp_path / f"img_00{index}.nrrd"))
    node = mrml.volume_node_from_file(ctx, tmp_path / "img_001.nrrd")
    assert mrml.grid_shape_kji(node) == SHAPE_KJI


def test_missing_file_is_a_bridge_error(ctx: Any, tmp_path: Path) -> None:
    with pytest.raises(MrmlBridgeError, match="not found"):
        mrml.volume_node_from_file(ctx, tmp_path / "nope.nii.gz")


def corrupt_variants(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    nii = image_bytes(tmp_path, make_image(), ".nii.gz")
    raw_nii = image_bytes(tmp_path, make_image(), ".nii")
    nrrd = image_bytes(tmp_path, make_image(), ".nrrd")
    return {
        "garbage nii.gz": (b"this is not an image" * 20, ".nii.gz"),
        "gzip of garbage": (gzip.compress(b"not a nifti header" * 40), ".nii.gz"),
        "truncated nii.gz": (nii[: len(nii) // 2], ".nii.gz"),
        "truncated nii": (raw_nii[: len(raw_nii) - 100], ".nii"),
        "truncated nrrd": (nrrd[: len(nrrd) - 40], ".nrrd"),
        "garbage nrrd": (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\nxx", ".nrrd"),
        "empty": (b"", ".nrrd"),
        "unsupported suffix": (nii, ".png"),
    }


@pytest.mark.parametrize("case", [
    "garbage nii.gz", "gzip of garbage", "truncated nii.gz", "truncated nii", "truncated nrrd", "garbage nrrd",
    "empty", "unsupported suffix",
])
def test_corrupt_image_bytes_raise_and_leave_the_scene_clean(ctx: Any, tmp_path: Path, case: str) -> None:
    data, suffix = corrupt_variants(tmp_path)[case]
    before = node_count(ctx)
    with pytest.raises(MrmlBridgeError):
        mrml.volume_node_from_bytes(ctx, data, suffix, "bad")
    assert node_count(ctx) == before


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_two_dimensional_image_is_rejected(ctx: Any, tmp_path: Path, suffix: str) -> None:
    image = sitk.GetImageFromArray(np.zeros((11, 13), np.int16))
    before = node_count(ctx)
    with pytest.raises(MrmlBridgeError, match="not a 3D volume"):
        mrml.volume_node_from_bytes(ctx, image_bytes(tmp_path, image, suffix), suffix, "flat")
    assert node_count(ctx) == before


def test_vector_image_is_rejected(ctx: Any, tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros(SHAPE_KJI + (3,), np.uint8), isVector=True)
    with pytest.raises(MrmlBridgeError):
        mrml.volume_node_from_bytes(ctx, image_bytes(tmp_path, image, ".nrrd"), ".nrrd", "rgb")


# ----------------------------------------------------------------------------------------- segmentations


def reference(ctx: Any, tmp_path: Path) -> tuple[Any, Any]:
    image = make_image()
    return mrml.volume_node_from_bytes(ctx, image_bytes(tmp_path, image, ".nii.gz"), ".nii.gz", "ct"), image


def masks_kji() -> dict[str, np.ndarray]:
    lung = np.zeros(SHAPE_KJI, bool)
    lung[1:7, 2:9, 3:10] = True
    lesion = np.zeros(SHAPE_KJI, bool)
    lesion[4:6, 4:6, 1:3] = True  # outside the lung box: no overlap
    return {"lung": lung, "lesion": lesion}


def seg_nrrd_bytes(tmp_path: Path, image: Any, segments: list[tuple[str, np.ndarray, list[float]]]) -> bytes:
    """A .seg.nrrd written by slicerio on ``image``'s grid; masks are (k, j, i), slicerio wants (i, j, k)."""
    ijk_to_lps = mrml.RAS_TO_LPS @ expected_ijk_to_ras(image)
    shape_ijk = tuple(reversed(SHAPE_KJI))
    segmentation = slicerio.create_segmentation(shape_ijk, ijk_to_lps)
    for index, (name, mask, color) in enumerate(segments):
        slicerio.add_segment(segmentation, np.transpose(mask, (2, 1, 0)),
                             {"id": f"Segment_{index + 1}", "name": name, "color": color})
    path = tmp_path / "label.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    return path.read_bytes()


def test_seg_nrrd_bytes_give_named_coloured_segments_with_their_voxels(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    masks = masks_kji()
    data = seg_nrrd_bytes(tmp_path, image, [("lung", masks["lung"], [0.1, 0.2, 0.3]),
                                            ("lesion", masks["lesion"], [0.9, 0.8, 0.1])])
    node = mrml.segmentation_node_from_bytes(ctx, data, "label", volume)

    info = mrml.segments_info(node)
    assert [s["id"] for s in info] == ["Segment_1", "Segment_2"]
    assert [s["name"] for s in info] == ["lung", "lesion"]
    np.testing.assert_allclose(info[0]["color"], [0.1, 0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(info[1]["color"], [0.9, 0.8, 0.1], atol=1e-6)
    assert node.GetDisplayNode() is not None and node.GetStorageNode() is None
    # The reference geometry is the volume's grid (so editing is not cropped).
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    array = mrml.labelmap_array_from_segmentation(ctx, node, volume, LABELS)
    np.testing.assert_array_equal(array == 1, masks["lung"])
    np.testing.assert_array_equal(array == 2, masks["lesion"])


def test_overlapping_segments_in_layers_later_segment_wins(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    lung = masks_kji()["lung"]
    lesion = np.zeros(SHAPE_KJI, bool)
    lesion[3:5, 3:5, 4:6] = True  # inside the lung: slicerio puts it in a second layer (4D NRRD)
    data = seg_nrrd_bytes(tmp_path, image, [("lung", lung, [1, 0, 0]), ("lesion", lesion, [0, 1, 0])])
    node = mrml.segmentation_node_from_bytes(ctx, data, "label", volume)
    assert node.GetSegmentation().GetNumberOfLayers() == 2
    array = mrml.labelmap_array_from_segmentation(ctx, node, volume, LABELS)
    expected = np.where(lesion, 2, np.where(lung, 1, 0))
    np.testing.assert_array_equal(array, expected)


def test_segmentation_from_file(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    seg_nrrd_bytes(tmp_path, image, [("lung", masks_kji()["lung"], [1, 0, 0])])
    node = mrml.segmentation_node_from_file(ctx, tmp_path / "label.seg.nrrd", reference_volume=volume)
    assert node.GetName() == "label"
    assert [s["name"] for s in mrml.segments_info(node)] == ["lung"]
    assert node.GetStorageNode() is not None


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nii"])
def test_submitted_labelmap_equals_source_voxels_on_the_image_grid(ctx: Any, tmp_path: Path, suffix: str) -> None:
    volume, image = reference(ctx, tmp_path)
    masks = masks_kji()
    data = seg_nrrd_bytes(tmp_path, image, [("Lung", masks["lung"], [1, 0, 0]),   # case differs on purpose
                                            ("LESION", masks["lesion"], [0, 1, 0])])
    node = mrml.segmentation_node_from_bytes(ctx, data, "label", volume)

    submitted = mrml.labelmap_bytes_from_segmentation(ctx, node, volume, LABELS, suffix=suffix)
    path = tmp_path / f"submitted{suffix}"
    path.write_bytes(submitted)
    back = sitk.ReadImage(str(path))
    expected = np.zeros(SHAPE_KJI, np.uint8)
    expected[masks["lung"]] = 1
    expected[masks["lesion"]] = 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)


def test_submission_as_seg_nrrd_has_one_named_segment_per_class_on_the_full_grid(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    lesion = masks_kji()["lesion"]
    node = mrml.segmentation_from_labelmap_array(ctx, lesion.astype(np.uint8) * 2, volume, LABELS, "pred")
    path = tmp_path / "submitted.seg.nrrd"
    path.write_bytes(mrml.labelmap_bytes_from_segmentation(ctx, node, volume, LABELS, suffix=".seg.nrrd"))
    written = slicerio.read_segmentation(str(path))
    assert tuple(written["voxels"].shape[-3:]) == tuple(reversed(SHAPE_KJI))  # not cropped
    np.testing.assert_allclose(written["ijkToLPS"], mrml.RAS_TO_LPS @ expected_ijk_to_ras(image), atol=1e-5)
    by_name = {s["name"]: s for s in written["segments"]}
    assert set(by_name) == {"lung", "lesion"}
    lesion_ijk = slicerio.segment_mask(written, "lesion")
    np.testing.assert_array_equal(np.transpose(lesion_ijk, (2, 1, 0)), lesion)
    assert not slicerio.segment_mask(written, "lung").any()


def test_empty_segmentation_submits_zeros_on_the_right_grid(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(mrml.labelmap_bytes_from_segmentation(ctx, node, volume, LABELS))
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == image.GetSize()
    assert not sitk.GetArrayFromImage(back).any()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)


def test_empty_segments_submit_zeros(ctx: Any, tmp_path: Path) -> None:
    volume, _ = reference(ctx, tmp_path)
    node = mrml.segmentation_from_labelmap_array(ctx, np.zeros(SHAPE_KJI, np.uint8), volume, LABELS, "blank")
    assert [s["name"] for s in mrml.segments_info(node)] == ["lung", "lesion"]
    array = mrml.labelmap_array_from_segmentation(ctx, node, volume, LABELS)
    assert array.shape == SHAPE_KJI and not array.any()


def test_segment_editor_names_fall_back_to_class_order(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    masks = masks_kji()
    data = seg_nrrd_bytes(tmp_path, image, [("Segment_1", masks["lung"], [1, 0, 0]),
                                            ("lesion", masks["lesion"], [0, 1, 0])])
    node = mrml.segmentation_node_from_bytes(ctx, data, "label", volume)
    assert mrml.segment_class_values(node, LABELS) == {"Segment_1": 1, "Segment_2": 2}
    # A named class claims its value first; the unnamed segment takes the remaining one.
    data = seg_nrrd_bytes(tmp_path, image, [("lesion", masks["lesion"], [1, 0, 0]),
                                            ("my drawing", masks["lung"], [0, 1, 0])])
    node = mrml.segmentation_node_from_bytes(ctx, data, "label", volume)
    assert mrml.segment_class_values(node, LABELS) == {"Segment_1": 2, "Segment_2": 1}


def test_more_unnamed_segments_than_classes_is_an_error(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    mask = masks_kji()["lung"]
    data = seg_nrrd_bytes(tmp_path, image, [("a", mask, [1, 0, 0]), ("b", mask, [0, 1, 0]), ("c", mask, [0, 0, 1])])
    node = mrml.segmentation_node_from_bytes(ctx, data, "label", volume)
    with pytest.raises(MrmlBridgeError, match="'c'"):
        mrml.labelmap_bytes_from_segmentation(ctx, node, volume, LABELS)


def test_labelmap_array_round_trips_through_a_segmentation(ctx: Any, tmp_path: Path) -> None:
    volume, _ = reference(ctx, tmp_path)
    labels = {1: "lung", 2: "lesion", 3: "vessel"}
    rng = np.random.default_rng(0)
    array = rng.integers(0, 3, SHAPE_KJI).astype(np.uint8)  # class 3 absent: still gets a segment
    node = mrml.segmentation_from_labelmap_array(ctx, array, volume, labels, "pred",
                                                 colors={2: (0.0, 0.0, 1.0)})
    info = mrml.segments_info(node)
    assert [s["name"] for s in info] == ["lung", "lesion", "vessel"]
    assert info[1]["color"] == (0.0, 0.0, 1.0)
    np.testing.assert_array_equal(mrml.labelmap_array_from_segmentation(ctx, node, volume, labels), array)


def test_resampled_export_uses_the_reference_grid(ctx: Any, tmp_path: Path) -> None:
    # A segmentation on a different (coarser) grid is exported onto the image grid.
    volume, image = reference(ctx, tmp_path)
    coarse = sitk.Resample(image, [s // 2 + 1 for s in image.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           image.GetOrigin(), [2 * s for s in image.GetSpacing()], image.GetDirection())
    coarse_node = mrml.volume_node_from_bytes(ctx, image_bytes(tmp_path, coarse, ".nrrd"), ".nrrd", "coarse")
    ones = np.ones(mrml.grid_shape_kji(coarse_node), np.uint8)
    node = mrml.segmentation_from_labelmap_array(ctx, ones, coarse_node, LABELS, "coarse seg")
    array = mrml.labelmap_array_from_segmentation(ctx, node, volume, LABELS)
    assert array.shape == SHAPE_KJI and array.max() == 1 and array.any()


def test_bad_labelmap_arrays_are_rejected(ctx: Any, tmp_path: Path) -> None:
    volume, _ = reference(ctx, tmp_path)
    with pytest.raises(MrmlBridgeError, match="shape"):
        mrml.segmentation_from_labelmap_array(ctx, np.zeros((2, 2, 2), np.uint8), volume, LABELS, "x")
    with pytest.raises(MrmlBridgeError, match=r"\[7\]"):
        mrml.segmentation_from_labelmap_array(ctx, np.full(SHAPE_KJI, 7, np.uint8), volume, LABELS, "x")
    with pytest.raises(MrmlBridgeError, match="integers"):
        mrml.segmentation_from_labelmap_array(ctx, np.zeros(SHAPE_KJI, np.float32), volume, LABELS, "x")
    with pytest.raises(MrmlBridgeError, match="class value"):
        mrml.segmentation_from_labelmap_array(ctx, np.zeros(SHAPE_KJI, np.uint8), volume, {0: "bg"}, "x")


@pytest.mark.parametrize("case", ["truncated", "garbage data", "not nrrd", "2d", "nifti"])
def test_corrupt_seg_nrrd_is_a_bridge_error_not_a_crash(ctx: Any, tmp_path: Path, case: str) -> None:
    # Without the pre-check, MRML's segmentation reader aborts the whole process on "truncated"/"garbage data".
    volume, image = reference(ctx, tmp_path)
    good = seg_nrrd_bytes(tmp_path, image, [("lung", masks_kji()["lung"], [1, 0, 0])])
    header, body = good.split(b"\n\n", 1)
    data = {
        "truncated": good[:-20],
        "garbage data": header + b"\n\n" + b"x" * len(body),
        "not nrrd": b"hello" * 100,
        "2d": image_bytes(tmp_path, sitk.GetImageFromArray(np.zeros((4, 5), np.uint8)), ".nrrd"),
        "nifti": image_bytes(tmp_path, image, ".nii.gz"),
    }[case]
    before = node_count(ctx)
    with pytest.raises(MrmlBridgeError):
        mrml.segmentation_node_from_bytes(ctx, data, "bad", volume)
    assert node_count(ctx) == before


def test_bridge_leaves_no_scratch_nodes(ctx: Any, tmp_path: Path) -> None:
    volume, image = reference(ctx, tmp_path)
    node = mrml.segmentation_from_labelmap_array(ctx, masks_kji()["lung"].astype(np.uint8), volume, LABELS, "p")
    before = [ctx.scene.GetNthNode(n).GetID() for n in range(node_count(ctx))]
    for suffix in (".nii.gz", ".seg.nrrd"):
        mrml.labelmap_bytes_from_segmentation(ctx, node, volume, LABELS, suffix=suffix)
    after = [ctx.scene.GetNthNode(n).GetID() for n in range(node_count(ctx))]
    assert after == before  # no colour tables, labelmaps, storage or display nodes left behind


def test_remove_node_takes_display_and_storage_nodes_along(ctx: Any, tmp_path: Path) -> None:
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(make_image(), str(path))
    before = node_count(ctx)
    node = mrml.volume_node_from_file(ctx, path)
    mrml.remove_node(ctx.scene, node)
    assert node_count(ctx) == before


# ----------------------------------------------------------------------------------------- file checks


def test_nrrd_check_accepts_what_itk_and_slicerio_write(tmp_path: Path) -> None:
    for compress in (True, False):
        path = tmp_path / f"x{compress}.nrrd"
        sitk.WriteImage(make_image(), str(path), useCompression=compress)
        fileformats.check_nrrd_bytes(path.read_bytes(), dimensions=(3,))
    with pytest.raises(MrmlBridgeError, match="dimension 3"):
        fileformats.check_nrrd_bytes(path.read_bytes(), dimensions=(4,))


def test_nifti_check_accepts_concatenated_gzip_members(tmp_path: Path) -> None:
    raw = image_bytes(tmp_path, make_image(), ".nii")
    data = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])
    fileformats.check_nifti_bytes(data, gzipped=True)
    with pytest.raises(MrmlBridgeError, match="too short"):
        fileformats.check_nifti_bytes(gzip.compress(raw[:1000]), gzipped=True)


def test_detached_nrrd_is_rejected() -> None:
    data = b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: x.raw\n\n"
    with pytest.raises(MrmlBridgeError, match="detached"):
        fileformats.check_nrrd_bytes(data)


def test_labels_from_json_with_string_keys_are_accepted(ctx: Any, tmp_path: Path) -> None:
    volume, _ = reference(ctx, tmp_path)
    array = masks_kji()["lung"].astype(np.uint8)
    node = mrml.segmentation_from_labelmap_array(ctx, array, volume, {"1": "lung", "2": "lesion"}, "json")
    np.testing.assert_array_equal(mrml.labelmap_array_from_segmentation(ctx, node, volume, {"2": "lesion", "1": "lung"}), array)
    with pytest.raises(MrmlBridgeError, match="class value 'x'"):
        mrml.segment_class_values(node, {"x": "lung"})
