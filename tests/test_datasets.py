"""Dataset registry: layouts built from tiny synthetic files, plus the real COVID-SemiSeg when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fakes import SEMISEG_LABELLED_MASKS, SEMISEG_TEST_MASKS, save_png, write_semiseg
from PIL import Image

from covidlib import datasets
from covidlib.datasets import (
    Case,
    data_root,
    get_dataset,
    list_datasets,
    lungs_by_side,
    read_label,
)
from covidlib.errors import InvalidInputError
from covidlib.io import Volume, write_volume

#: Where the real COVID-SemiSeg is, as ci/test finds it: $COVIDLIB_REAL_DATA, else ../shared/data.
REAL_SEMISEG = Path(os.environ.get("COVIDLIB_REAL_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-semiseg"))


# ---------------------------------------------------------------------------------------------
# data root and registry


def test_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVIDLIB_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "param") == tmp_path / "param"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("COVIDLIB_DATA")
    assert data_root() == Path.home() / ".cache" / "covidlib"


def test_registry_lists_every_dataset_with_its_facts() -> None:
    infos = list_datasets()
    names = [i.name for i in infos]
    assert names == ["phantom", "covid19-ct-seg", "msd-lung", "mosmed", "nsclc", "covid-semiseg", "folder"]
    for info in infos:
        assert info.description and info.size and info.licence and info.obtained


def test_unknown_dataset_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown"):
        get_dataset("no-such-dataset")
    with pytest.raises(InvalidInputError, match=r"nowhere.*covid-semiseg"):
        get_dataset("covid-semiseg", tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="bad option"):
        get_dataset("covid-semiseg", tmp_path, colour=True)


def test_default_root_comes_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _build_semiseg(tmp_path / "covid-semiseg")
    monkeypatch.setenv("COVIDLIB_DATA", str(tmp_path))
    assert len(get_dataset("covid-semiseg").case_ids("test")) == 2


# ---------------------------------------------------------------------------------------------
# COVID-SemiSeg


def _build_semiseg(root: Path) -> dict[str, np.ndarray]:
    """Inf-Net layout with 3 labelled (names 0, 2, 10: natural order), 2 unlabelled, 2 test slices."""
    rng = np.random.default_rng(0)
    labelled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    multiclass: dict[str, np.ndarray] = {}
    for name in ("0", "10", "2"):
        shape = (20 + int(name), 24)
        image = rng.integers(0, 256, shape)
        gt = np.zeros(shape, np.uint8)
        gt[3:7, 4:9] = 255
        classes = np.zeros(shape, np.uint8)
        classes[3:7, 4:6], classes[3:7, 6:9] = 1, 2
        labelled[name], multiclass[name] = (image, gt), classes
    unlabelled = {name: rng.integers(0, 256, (16, 16))
                  for name in ("Data-1_coronacases_org_001_12", "Data-1_radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm_3")}
    test_gt = np.zeros((12, 14), np.uint8)
    test_gt[0, 0] = 255
    test = {name: (np.full((12, 14), 100), test_gt) for name in ("a", "b")}
    write_semiseg(root, labelled, unlabelled=unlabelled, test=test, multiclass=multiclass)
    return {**{f"train/{name}": gt for name, (_, gt) in labelled.items()},
            **{f"test/{name}": gt for name, (_, gt) in test.items()}}


def test_semiseg_layout_splits_and_masks(tmp_path: Path) -> None:
    truth = _build_semiseg(tmp_path)
    ds = get_dataset("covid-semiseg", tmp_path)
    assert ds.splits == ("train", "unlabelled", "test")
    assert ds.case_ids("train") == ["train/0", "train/2", "train/10"]
    assert len(ds.case_ids("unlabelled")) == 2 and len(ds.case_ids("test")) == 2 and len(ds) == 7
    for case_id, gt in truth.items():
        case = ds.load(case_id)
        assert isinstance(case, Case)
        assert case.image.shape == (1, *gt.shape) and case.image.array.dtype == np.float32
        assert case.lesion_mask is not None and case.lesion_mask.dtype == np.uint8
        np.testing.assert_array_equal(case.lesion_mask[0], (gt == 255).astype(np.uint8))
        assert case.lung_mask is None and case.meta["intensity"] == "8bit"
    test_case = ds.load("test/a")
    # JPEG of a constant image decodes back to that constant.
    np.testing.assert_array_equal(test_case.image.array, np.full((1, 12, 14), 100, np.float32))
    unlabelled = ds.load("unlabelled/Data-1_coronacases_org_001_12")
    assert unlabelled.lesion_mask is None
    assert unlabelled.meta["source_volume"] == "coronacases_org_001" and unlabelled.meta["slice_index"] == 12


def test_semiseg_multiclass(tmp_path: Path) -> None:
    _build_semiseg(tmp_path)
    case = get_dataset("covid-semiseg", tmp_path, multiclass=True).load("train/2")
    assert case.lesion_mask is not None
    assert sorted(np.unique(case.lesion_mask).tolist()) == [0, 1, 2]
    assert int((case.lesion_mask == 2).sum()) == 4 * 3


def test_semiseg_bad_masks_name_the_file(tmp_path: Path) -> None:
    _build_semiseg(tmp_path)
    gt_dir = tmp_path / SEMISEG_LABELLED_MASKS
    (gt_dir / "0.png").unlink()
    ds = get_dataset("covid-semiseg", tmp_path)
    with pytest.raises(InvalidInputError, match=r"GT/0\.png.*missing"):
        ds.load("train/0")
    save_png(gt_dir / "2.png", np.zeros((5, 5)))
    with pytest.raises(InvalidInputError, match=r"GT/2\.png.*shape"):
        ds.load("train/2")
    bad = np.zeros((30, 24), np.uint8)
    bad[0, 0] = 7
    save_png(gt_dir / "10.png", bad)
    with pytest.raises(InvalidInputError, match=r"GT/10\.png.*unexpected mask values \[7\]"):
        ds.load("train/10")
    test_gt = tmp_path / SEMISEG_TEST_MASKS / "a.png"
    test_gt.write_bytes(test_gt.read_bytes()[:40])  # truncated inside its image data
    with pytest.raises(InvalidInputError, match=r"GT/a\.png: cannot read the ground-truth mask"):
        ds.load("test/a")
    with pytest.raises(InvalidInputError, match="split"):
        ds.case_ids("validation")
    with pytest.raises(InvalidInputError, match="not in dataset"):
        ds.load("train/999")


def test_read_8bit_gives_grey_levels_and_names_a_bad_file(tmp_path: Path) -> None:
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (255, 255, 255)
    colour[1, 2] = (0, 0, 255)  # pure blue: ITU-R 601 luma 0.114 * 255 = 29
    Image.fromarray(colour).save(tmp_path / "colour.png")
    grey = datasets.read_8bit(tmp_path / "colour.png")
    assert grey.dtype == np.uint8 and grey.shape == (2, 3)
    assert grey[0, 0] == 255 and grey[1, 2] == 29 and grey[0, 1] == 0
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InvalidInputError, match=r"bad\.png: cannot be read as an image"):
        datasets.read_8bit(tmp_path / "bad.png")


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SEMISEG.is_dir(), reason="real COVID-SemiSeg data not present")
def test_real_semiseg_is_listed_lazily_and_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reading(path: Path) -> np.ndarray:
        raise AssertionError(f"listing read {path}")

    monkeypatch.setattr(datasets, "read_8bit", no_reading)  # listing is a directory scan: no image is read
    ds = get_dataset("covid-semiseg", REAL_SEMISEG)
    counts = {split: len(ds.case_ids(split)) for split in ds.splits}
    monkeypatch.undo()
    assert counts == {"train": 50, "unlabelled": 1600, "test": 0}  # the test split is not shipped here
    case = ds.load("train/0")
    assert case.lesion_mask is not None and set(np.unique(case.lesion_mask)) <= {0, 1}
    assert case.lesion_mask.sum() > 0
    assert 0 <= case.image.array.min() and case.image.array.max() <= 255
    multi = get_dataset("covid-semiseg", REAL_SEMISEG, multiclass=True).load("train/0")
    assert multi.lesion_mask is not None
    # The multi-class GT marks the same infected pixels as the binary GT, split into two classes.
    agreement = np.mean((multi.lesion_mask > 0) == (case.lesion_mask > 0))
    assert agreement > 0.95


# ---------------------------------------------------------------------------------------------
# NIfTI folder datasets


def _lungs(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of two box 'lungs': one at small x index, one at large x index."""
    low_x, high_x = np.zeros(shape, bool), np.zeros(shape, bool)
    low_x[:, 4:12, 2:7] = True
    high_x[:, 4:12, 9:14] = True
    return low_x, high_x


def _write_case(root: Path, image_rel: str, masks: dict[str, np.ndarray], spacing=(2.0, 0.7, 0.7),
                direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), origin=(0.0, 0.0, 0.0)) -> Volume:
    rng = np.random.default_rng(len(image_rel))
    image = Volume(rng.normal(-800, 50, (4, 16, 16)).astype(np.float32), spacing, origin, direction)
    write_volume(image, root / image_rel)
    for rel, labels in masks.items():
        write_volume(Volume(labels.astype(np.uint8), spacing, origin, direction), root / rel)
    return image


def test_folder_dataset_pairs_labelled_and_unlabelled(tmp_path: Path) -> None:
    low_x, high_x = _lungs((4, 16, 16))
    lesion = np.zeros((4, 16, 16), np.uint8)
    lesion[1, 5:7, 3:5] = 3  # any non-zero label is lesion
    # Ma et al.-style lung labels: 1 on the patient's left (large x), 2 on the right (small x).
    lung_labels = (high_x * 1 + low_x * 2).astype(np.uint8)
    _write_case(tmp_path, "images/a.nii.gz", {"masks/a.nii.gz": lesion, "lungs/a.nii.gz": lung_labels})
    _write_case(tmp_path, "images/b.nii.gz", {})
    ds = get_dataset("folder", tmp_path, lung_pattern="lungs/{id}.nii.gz")
    assert ds.case_ids("labelled") == ["a"] and ds.case_ids("unlabelled") == ["b"]
    assert ds.spacing("b") == pytest.approx((2.0, 0.7, 0.7))  # from the header only
    case = ds.load("a")
    np.testing.assert_array_equal(case.lesion_mask, (lesion > 0).astype(np.uint8))
    # lungmask convention: right lung (small x with identity direction) 1, left 2.
    np.testing.assert_array_equal(case.lung_mask, (low_x * 1 + high_x * 2).astype(np.uint8))
    assert case.meta["split"] == "labelled" and case.meta["intensity"] == "hu"
    assert ds.load("b").lesion_mask is None


def test_lungs_by_side_follows_the_direction_matrix() -> None:
    low_x, high_x = _lungs((4, 16, 16))
    labels = (low_x * 5 + high_x * 9).astype(np.uint8)
    identity = Volume(np.zeros((4, 16, 16), np.float32), (1.0, 1.0, 1.0))
    flipped = Volume(np.zeros((4, 16, 16), np.float32), (1.0, 1.0, 1.0), direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    np.testing.assert_array_equal(lungs_by_side(labels, identity), low_x * 1 + high_x * 2)
    # x index grows towards the patient's right when the first direction column is -1.
    np.testing.assert_array_equal(lungs_by_side(labels, flipped), low_x * 2 + high_x * 1)
    # One label for both lungs: split by connected components, then by side.
    np.testing.assert_array_equal(lungs_by_side((low_x | high_x).astype(np.uint8), identity), low_x * 1 + high_x * 2)
    with pytest.raises(InvalidInputError, match="one connected region"):
        lungs_by_side(low_x.astype(np.uint8), identity)


def test_mask_geometry_mismatch_names_the_mask(tmp_path: Path) -> None:
    _write_case(tmp_path, "images/a.nii.gz", {})
    write_volume(Volume(np.zeros((4, 16, 16), np.uint8), (2.0, 0.8, 0.8)), tmp_path / "masks" / "a.nii.gz")
    with pytest.raises(InvalidInputError, match=r"masks/a\.nii\.gz: mask spacing"):
        get_dataset("folder", tmp_path).load("a")
    write_volume(Volume(np.zeros((4, 16, 15), np.uint8), (2.0, 0.7, 0.7)), tmp_path / "masks" / "a.nii.gz")
    with pytest.raises(InvalidInputError, match=r"masks/a\.nii\.gz: mask shape \(4, 16, 15\)"):
        get_dataset("folder", tmp_path).load("a")


def test_read_label_returns_the_labels_on_the_image_grid_and_names_a_mismatch(tmp_path: Path) -> None:
    """A label file is only usable on its image's grid; a mismatch must name the label file."""
    image = Volume(np.zeros((3, 4, 5), np.float32), (2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0), source="img.nii.gz")
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 1:3, 2:4], labels[2, 0, 0] = 1, 7
    path = write_volume(Volume(labels, image.spacing, origin=image.origin), tmp_path / "label.nii.gz")
    read = read_label(path, image)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, labels)
    shifted = write_volume(Volume(labels, image.spacing, origin=(1.0, 2.0, 4.0)), tmp_path / "shifted.nii.gz")
    with pytest.raises(InvalidInputError, match=r"shifted\.nii\.gz: mask origin .* differs from image img\.nii\.gz"):
        read_label(shifted, image)


def test_orphan_mask_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(InvalidInputError, match="no image matches"):
        get_dataset("folder", tmp_path).case_ids()
    write_volume(Volume(np.zeros((4, 16, 16), np.uint8), (1.0, 1.0, 1.0)), tmp_path / "masks" / "z.nii.gz")
    _write_case(tmp_path, "images/a.nii.gz", {})
    with pytest.raises(InvalidInputError, match=r"z\.nii\.gz: mask of case 'z' has no image"):
        get_dataset("folder", tmp_path).case_ids()
    with pytest.raises(InvalidInputError, match="exactly once"):
        get_dataset("folder", tmp_path, image_pattern="images/*.nii.gz").case_ids()


def test_mosmed_and_msd_layouts(tmp_path: Path) -> None:
    lesion = np.zeros((4, 16, 16), np.uint8)
    lesion[2, 3:5, 3:5] = 1
    mosmed = tmp_path / "mosmed"
    _write_case(mosmed, "studies/CT-1/study_0255.nii.gz", {"masks/study_0255_mask.nii.gz": lesion})
    _write_case(mosmed, "studies/CT-0/study_0001.nii.gz", {})
    ds = get_dataset("mosmed", mosmed)
    assert ds.case_ids("labelled") == ["study_0255"] and ds.case_ids("unlabelled") == ["study_0001"]
    assert int(ds.load("study_0255").lesion_mask.sum()) == 4

    msd = tmp_path / "msd" / "Task06_Lung"
    _write_case(msd, "imagesTr/lung_001.nii.gz", {"labelsTr/lung_001.nii.gz": lesion})
    _write_case(msd, "imagesTs/lung_002.nii.gz", {})
    (msd / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"macOS resource fork")
    ds = get_dataset("msd-lung", tmp_path / "msd")
    assert ds.case_ids("labelled") == ["lung_001"] and ds.case_ids("unlabelled") == ["lung_002"]


def test_nsclc_layout(tmp_path: Path) -> None:
    low_x, high_x = _lungs((4, 16, 16))
    effusion = np.zeros((4, 16, 16), np.uint8)
    effusion[3, 10:12, 2:5] = 1
    _write_case(tmp_path, "images/LUNG1-001.nii.gz",
                {"Effusions/LUNG1-001/LUNG1-001_effusion_first_reviewer.nii.gz": effusion,
                 "Thoracic_Cavities/LUNG1-001/LUNG1-001_thor_cav_primary_reviewer.nii.gz": (low_x | high_x)})
    case = get_dataset("nsclc", tmp_path).load("LUNG1-001")
    np.testing.assert_array_equal(case.lung_mask, low_x * 1 + high_x * 2)
    np.testing.assert_array_equal(case.lesion_mask, effusion)


def test_covid19_ct_seg_layout_names_and_intensity(tmp_path: Path) -> None:
    low_x, high_x = _lungs((4, 16, 16))
    lesion = np.zeros((4, 16, 16), np.uint8)
    lesion[1, 5, 5] = 1
    lungs = (high_x * 1 + low_x * 2).astype(np.uint8)
    _write_case(tmp_path, "COVID-19-CT-Seg_20cases/coronacases_org_001.nii.gz",
                {"Infection_Mask/coronacases_001.nii.gz": lesion, "Lung_Mask/coronacases_001.nii.gz": lungs,
                 "Lung_and_Infection_Mask/coronacases_001.nii.gz": lungs + 2 * lesion})
    _write_case(tmp_path, "COVID-19-CT-Seg_20cases/radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz",
                {"Infection_Mask/radiopaedia_4_85506_1.nii.gz": lesion})
    ds = get_dataset("covid19-ct-seg", tmp_path)
    assert ds.case_ids("labelled") == ["coronacases_001", "radiopaedia_4_85506_1"]
    case = ds.load("coronacases_001")
    np.testing.assert_array_equal(case.lesion_mask, lesion)
    np.testing.assert_array_equal(case.lung_mask, low_x * 1 + high_x * 2)
    assert case.meta["intensity"] == "hu"
    assert ds.load("radiopaedia_4_85506_1").meta["intensity"] == "8bit"


def test_covid19_ct_seg_checksums_are_pinned() -> None:
    for remote in datasets.COVID19_CT_SEG_FILES.values():
        assert remote.url.startswith("https://zenodo.org/records/3757476/files/")
        assert remote.sha256 is not None and len(remote.sha256) == 64
    assert datasets.MSD_LUNG_FILE.md5 is not None and len(datasets.MSD_LUNG_FILE.md5) == 32


# ---------------------------------------------------------------------------------------------
# phantom


def test_phantom_cohort_is_deterministic_and_lazy() -> None:
    ds = get_dataset("phantom", n=3, shape=(16, 48, 48), seed=5)
    assert ds.case_ids() == ["phantom_000", "phantom_001", "phantom_002"] and len(ds) == 3
    first, again = ds.load("phantom_001"), ds.load("phantom_001")
    np.testing.assert_array_equal(first.image.array, again.image.array)
    assert first.image.shape == (16, 48, 48) and first.meta["seed"] == 6 and first.meta["intensity"] == "hu"
    assert first.lung_mask is not None and set(np.unique(first.lung_mask)) == {0, 1, 2}
    assert not np.array_equal(ds.load("phantom_000").image.array, first.image.array)


def test_default_split_is_train_when_present_else_the_first(tmp_path: Path) -> None:
    assert get_dataset("phantom", n=1).default_split == "all"
    (tmp_path / "images").mkdir()
    assert get_dataset("folder", tmp_path).default_split == "labelled"

    class Splits(datasets.PhantomDataset):
        splits = ("unlabelled", "train")

    assert Splits(n=1).default_split == "train"
    Splits.splits = ()
    with pytest.raises(InvalidInputError, match="no splits"):
        _ = Splits(n=1).default_split
