"""covidlib.io: round trips keep voxels and geometry; every kind of bad file raises a clear error."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidlib import io
from covidlib.errors import InvalidInputError
from covidlib.io import Volume, read_mask, read_volume, write_volume

OBLIQUE = tuple(np.round(sitk.VersorTransform((0.0, 0.0, 1.0), 0.3).GetMatrix(), 12).tolist())


def small_volume(dtype=np.float32) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 1500, size=(5, 6, 7)).astype(dtype)
    return Volume(array, spacing=(2.5, 0.7, 0.8), origin=(-10.0, 20.5, 33.0), direction=OBLIQUE, source="small")


def write_sitk(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path: Path, suffix: str) -> None:
    volume = small_volume()
    path = write_volume(volume, tmp_path / f"scan{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.float32 and back.shape == (5, 6, 7)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-5)
    assert back.source == str(path)


def test_sitk_conversion_maps_zyx_array_to_xyz_image() -> None:
    volume = small_volume()
    image = volume.to_sitk()
    assert image.GetSize() == (7, 6, 5)
    assert image.GetSpacing() == (0.8, 0.7, 2.5)
    # Voxel (z=1, y=2, x=3) of the array is index (3, 2, 1) of the image.
    assert image.GetPixel(3, 2, 1) == volume.array[1, 2, 3]
    assert Volume.from_sitk(image).spacing == volume.spacing


def test_read_mask_is_uint8_and_rejects_fractional_labels(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 2:4] = 2
    path = write_volume(Volume(labels, (1.0, 1.0, 1.0)), tmp_path / "mask.nii.gz")
    mask = read_mask(path)
    assert mask.array.dtype == np.uint8
    np.testing.assert_array_equal(mask.array, labels)
    soft = write_volume(Volume(labels.astype(np.float32) * 0.3, (1.0, 1.0, 1.0)), tmp_path / "soft.nii.gz")
    with pytest.raises(InvalidInputError, match="whole labels"):
        read_mask(soft)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file") as info:
        read_volume(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        read_volume(path)


def test_truncated_gzip_nifti(tmp_path: Path) -> None:
    path = write_volume(small_volume(), tmp_path / "scan.nii.gz")
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    # SimpleITK alone reads this without complaint, filling the missing voxels with zeros.
    assert sitk.ReadImage(str(cut)).GetSize() == (7, 6, 5)
    with pytest.raises(InvalidInputError, match="truncated") as info:
        read_volume(cut)
    assert "cut.nii.gz" in str(info.value)


def test_truncated_uncompressed_nifti(tmp_path: Path) -> None:
    path = write_volume(small_volume(), tmp_path / "scan.nii")
    cut = tmp_path / "cut.nii"
    cut.write_bytes(path.read_bytes()[:-4])  # the last voxel is missing
    with pytest.raises(InvalidInputError, match="cut.nii: file is truncated"):
        read_volume(cut)


def test_corrupted_nifti_header(tmp_path: Path) -> None:
    path = write_volume(small_volume(), tmp_path / "scan.nii")
    data = bytearray(path.read_bytes())
    data[0:4] = b"\xff\xff\xff\x7f"  # sizeof_hdr must be 348
    data[344:348] = b"zzzz"  # magic must be n+1
    bad = tmp_path / "bad.nii"
    bad.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="bad.nii"):
        read_volume(bad)


def test_corrupted_nrrd_header(tmp_path: Path) -> None:
    path = write_volume(small_volume(), tmp_path / "scan.nrrd")
    data = path.read_bytes()
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(data.replace(b"sizes: 7 6 5", b"sizes: 7 6 five"))
    assert bad.read_bytes() != data
    with pytest.raises(InvalidInputError, match="bad.nrrd"):
        read_volume(bad)


def test_2d_image_is_rejected_unless_allowed(tmp_path: Path) -> None:
    path = write_sitk(sitk.GetImageFromArray(np.full((6, 7), -500, np.int16)), tmp_path / "slice.nii.gz")
    with pytest.raises(InvalidInputError, match="2D") as info:
        read_volume(path)
    assert "slice.nii.gz" in str(info.value)
    one = read_volume(path, allow_2d=True)
    assert one.shape == (1, 6, 7)


def test_4d_image_is_rejected(tmp_path: Path) -> None:
    frames = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)) for _ in range(2)]
    path = write_sitk(sitk.JoinSeries(frames), tmp_path / "series.nii.gz")
    with pytest.raises(InvalidInputError, match="4D"):
        read_volume(path)


def test_4d_image_with_one_frame_reads_as_3d(tmp_path: Path) -> None:
    frame = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    path = write_sitk(sitk.JoinSeries([frame]), tmp_path / "single.nii.gz")
    np.testing.assert_array_equal(read_volume(path).array, np.arange(60).reshape(3, 4, 5))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_voxel_is_rejected(tmp_path: Path, suffix: str, bad_value: float) -> None:
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = bad_value
    path = write_sitk(sitk.GetImageFromArray(array), tmp_path / f"nan{suffix}")
    with pytest.raises(InvalidInputError, match="1 voxel\\(s\\) are NaN or infinite") as info:
        read_volume(path)
    assert f"nan{suffix}" in str(info.value)


def test_itk_alone_hides_nan_in_nifti(tmp_path: Path) -> None:
    """Why read_volume scans NIfTI data itself: ITK's reader turns NaN into 0 without a word."""
    array = np.zeros((2, 2, 2), np.float32)
    array[0, 0, 0] = np.nan
    path = write_sitk(sitk.GetImageFromArray(array), tmp_path / "nan.nii")
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()


def test_zero_spacing_in_header_is_rejected(tmp_path: Path) -> None:
    path = write_volume(Volume(np.zeros((3, 4, 5), np.float32), (1.0, 1.0, 1.0)), tmp_path / "scan.nrrd")
    text = path.read_bytes()
    bad = tmp_path / "flat.nrrd"
    # The z axis direction vector (its length is the spacing) becomes zero.
    bad.write_bytes(text.replace(b"(0,0,1)", b"(0,0,0)"))
    assert bad.read_bytes() != text
    with pytest.raises(InvalidInputError, match="spacing|cannot be read") as info:
        read_volume(bad)
    assert "flat.nrrd" in str(info.value)


def test_zero_pixdim_nifti_is_rejected(tmp_path: Path) -> None:
    path = write_volume(Volume(np.zeros((3, 4, 5), np.float32), (1.0, 1.0, 1.0)), tmp_path / "scan.nii")
    data = bytearray(path.read_bytes())
    # pixdim[1..3] (x, y, z spacing) are float32 at bytes 80..91 of the NIfTI-1 header.
    assert np.frombuffer(bytes(data[80:92]), "<f4").tolist() == [1.0, 1.0, 1.0]
    data[84:88] = np.float32(0.0).tobytes()
    bad = tmp_path / "zero.nii"
    bad.write_bytes(bytes(data))
    # SimpleITK alone quietly replaces the zero by 1 mm.
    assert sitk.ReadImage(str(bad)).GetSpacing() == (1.0, 1.0, 1.0)
    with pytest.raises(InvalidInputError, match="spacing .* must be positive") as info:
        read_volume(bad)
    assert "zero.nii" in str(info.value)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"not really")
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        read_volume(path)


def test_dicom_series_round_trip(tmp_path: Path) -> None:
    """Write a small CT series slice by slice with SimpleITK (stored values + rescale), read it back in HU."""
    hu = np.random.default_rng(1).integers(-1000, 1000, size=(4, 8, 9)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.7, 2.0))
    image.SetOrigin((-5.0, -6.0, 10.0))
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(hu.shape[0]):
        sl = image[:, :, k]
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", series_uid)
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0018|0050", "2.0")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    volume = read_volume(folder)
    assert volume.shape == (4, 8, 9) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, hu.astype(np.float32))
    np.testing.assert_allclose(volume.spacing, (2.0, 0.7, 0.7), rtol=1e-5)
    np.testing.assert_allclose(volume.origin, (-5.0, -6.0, 10.0), atol=1e-4)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InvalidInputError, match="no DICOM series"):
        read_volume(tmp_path)


def test_write_is_atomic_when_the_writer_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous version")

    def half_write(image: sitk.Image, path: str, compress: bool) -> None:
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.sitk, "WriteImage", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_volume(small_volume(), target)
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    monkeypatch.undo()
    write_volume(small_volume(), tmp_path / "new.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.nii.gz", "out.nii.gz"]


def test_atomic_writes_replace_whole_files_or_leave_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "record.json"
    assert io.atomic_write_text(target, "é first\n") == target  # the folder is created
    assert target.read_bytes() == "é first\n".encode("utf-8")
    io.atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with pytest.raises(RuntimeError, match="interrupted"):
        with io.atomic_path(target, suffix=".npz") as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".npz") and tmp != target
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["record.json"]  # no temporary file left


def test_atomic_writes_give_a_new_file_the_umask_permissions_and_keep_an_old_files(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        fresh = io.atomic_write_text(tmp_path / "fresh.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, not a temporary file's 0o600
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o604)
        io.atomic_write_text(kept, "new")
        assert kept.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(previous)


def test_write_rejects_multi_file_formats(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot write"):
        write_volume(small_volume(), tmp_path / "scan.mhd")
    assert not any(tmp_path.iterdir())


def test_volume_validation_names_the_source() -> None:
    with pytest.raises(InvalidInputError, match="3D"):
        Volume(np.zeros((4, 5), np.float32), (1.0, 1.0, 1.0), source="flat.nii")
    with pytest.raises(InvalidInputError, match="nan.nii: 1 voxel"):
        Volume(np.array([[[np.nan, 0.0]]], np.float32), (1.0, 1.0, 1.0), source="nan.nii")
    with pytest.raises(InvalidInputError, match="spacing"):
        Volume(np.zeros((2, 2, 2), np.float32), (1.0, 0.0, 1.0), source="zero.nii")
    with pytest.raises(InvalidInputError, match="spacing"):
        Volume(np.zeros((2, 2, 2), np.float32), (1.0, -1.0, 1.0))
    with pytest.raises(InvalidInputError, match="direction"):
        Volume(np.zeros((2, 2, 2), np.float32), (1.0, 1.0, 1.0), direction=(1.0, 0.0))
    volume = small_volume()
    with pytest.raises(InvalidInputError, match="differs"):
        volume.with_array(np.zeros((5, 6, 8)))
    copy = volume.with_array(volume.array * 0)
    assert copy.spacing == volume.spacing and copy.origin == volume.origin and copy.source == "small"


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_nrrd_and_metaimage(tmp_path: Path, suffix: str) -> None:
    path = write_volume(small_volume(), tmp_path / f"scan{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InvalidInputError, match=f"cut{suffix}: cannot be read"):
        read_volume(cut)


def test_gzip_helper_sanity(tmp_path: Path) -> None:
    """The .nii.gz files written here really are gzip (the truncation test relies on it)."""
    path = write_volume(small_volume(), tmp_path / "scan.nii.gz")
    with gzip.open(path) as fh:
        assert int.from_bytes(fh.read(4), "little") == 348
    assert os.path.getsize(path) > 0


def test_check_output_folder_and_file_refuse_paths_blocked_by_a_file(tmp_path: Path) -> None:
    """An output blocked by an existing file must be refused before the work, naming the option."""
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder")
    io.check_output_folder("--out", tmp_path / "new" / "deeper")  # nothing there yet: fine
    io.check_output_folder("--out", tmp_path)  # an existing folder: fine
    io.check_output_file("--record", tmp_path / "new" / "record.json")
    io.check_output_file("--record", plain)  # the file itself may be replaced
    with pytest.raises(InvalidInputError, match=r"^--out .*plain\.txt: exists and is not a folder"):
        io.check_output_folder("--out", plain)
    with pytest.raises(InvalidInputError, match=r"^--out .*plain\.txt/sub: lies under .*plain\.txt, which is not"):
        io.check_output_folder("--out", plain / "sub")
    with pytest.raises(InvalidInputError, match=r"^--record .*plain\.txt/a/r\.json: lies under .*plain\.txt,"):
        io.check_output_file("--record", plain / "a" / "r.json")
