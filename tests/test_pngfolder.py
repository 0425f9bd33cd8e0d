"""The PNG folder: export layout and CSV, ImageFolder parity, and every bad input's policy."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from course_utils.bad_files import make_bad_examples, write_decompression_bomb
from course_utils.data import CLASSES, MEAN, STD, FashionMNISTTensors, standard_transform
from course_utils.pngfolder import (
    BadImageError,
    PNGFolder,
    Skipped,
    check_numbered_order,
    class_folder_name,
    export_image_folder,
    load_grey,
    read_png_cv2,
    read_png_pil,
)


@pytest.fixture(scope="module")
def small(fashion_splits: dict[str, FashionMNISTTensors]) -> FashionMNISTTensors:
    """Three real test images per class."""
    labels = fashion_splits["test"].labels
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:3] for c in range(10)])
    return fashion_splits["test"].subset(idx)


@pytest.fixture
def exported(tmp_path: Path, small: FashionMNISTTensors) -> Path:
    export_image_folder(small, tmp_path / "pngs", prefix="test")
    return tmp_path / "pngs"


@pytest.fixture
def bad_root(tmp_path: Path, small: FashionMNISTTensors) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "bad"
    expected = make_bad_examples(root / "0_mixed", small.images[0].numpy())
    (root / "1_clean").mkdir()
    Image.fromarray(small.images[1].numpy()).save(root / "1_clean" / "a.png")
    (root / "2_empty").mkdir()
    (root / ".hidden_folder").mkdir()
    return root, expected


def _reasons(ds: PNGFolder) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in ds.report}


# --- export ------------------------------------------------------------------------------------


def test_export_layout_and_csv(exported: Path, small: FashionMNISTTensors) -> None:
    folders = sorted(p.name for p in exported.iterdir() if p.is_dir())
    assert folders == [class_folder_name(c, n) for c, n in enumerate(CLASSES)]
    assert folders[0] == "00_T-shirt-top" and folders[9] == "09_Ankle-boot"
    csv = pd.read_csv(exported / "labels.csv")
    assert list(csv.columns) == ["path", "label", "class_name"]
    assert len(csv) == 30 and csv["label"].tolist() == small.labels.tolist()
    for row in csv.itertuples():
        assert row.path.startswith(class_folder_name(row.label, CLASSES[row.label]) + "/")
        assert (exported / row.path).is_file()
    first = np.asarray(Image.open(exported / csv.path[0]))
    assert np.array_equal(first, small.images[0].numpy())  # PNG is lossless
    assert not list(exported.rglob("*.tmp"))


def test_export_appends_a_second_split(exported: Path, small: FashionMNISTTensors) -> None:
    export_image_folder(small.subset(torch.arange(5)), exported, prefix="extra")
    csv = pd.read_csv(exported / "labels.csv")
    assert len(csv) == 35 and csv.path.is_unique


# --- parity ------------------------------------------------------------------------------------


def test_parity_with_imagefolder(exported: Path) -> None:
    ours = PNGFolder(exported, on_error="raise")
    ref = datasets.ImageFolder(
        exported, transform=transforms.Compose([transforms.Grayscale(1), standard_transform()])
    )
    assert ours.classes == ref.classes and ours.class_to_idx == ref.class_to_idx
    assert [(Path(p), y) for p, y in ours.samples] == [(Path(p), y) for p, y in ref.samples]
    assert len(ours) == len(ref) == 30
    for i in range(len(ours)):
        (x, y), (x_ref, y_ref) = ours[i], ref[i]
        assert y == y_ref
        assert torch.equal(x, x_ref)
    assert ours.report == [Skipped("labels.csv", "not a .png file: ignored")]


def test_labels_match_the_csv_and_the_pixels_the_source(
    exported: Path, small: FashionMNISTTensors
) -> None:
    ds = PNGFolder(exported)
    csv = pd.read_csv(exported / "labels.csv").set_index("path")
    for path, label in ds.samples:
        assert csv.loc[Path(path).relative_to(exported).as_posix(), "label"] == label
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    expected = (small.images[small.labels == y][0].float() / 255 - MEAN) / STD
    torch.testing.assert_close(x[0], expected)


# --- label order with more than ten classes ----------------------------------------------------


class SortedFolderDataset(torch.utils.data.Dataset):
    """What a learner writes (chapter 7's exercise): labels from the sorted folder names."""

    def __init__(self, root: Path) -> None:
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((root / name).glob("*.png"))
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            return standard_transform()(img.convert("L")), label


def test_eleven_classes_keep_their_labels(tmp_path: Path, small: FashionMNISTTensors) -> None:
    """With 11 classes, every loader that numbers classes by sorted folder name (ImageFolder,
    PNGFolder, a hand-written Dataset) gives each file the label the CSV wrote for it."""
    classes = (*CLASSES, "Extra class")
    images = torch.cat([small.images, small.images[:3]])
    labels = torch.cat([small.labels, torch.full((3,), 10)])
    root = tmp_path / "eleven"
    csv = export_image_folder(FashionMNISTTensors(images, labels), root, classes=classes)
    csv_label = {row.path: row.label for row in csv.itertuples()}
    folder_ds = datasets.ImageFolder(root)
    loaders = {
        "ImageFolder": folder_ds.samples,
        "PNGFolder": PNGFolder(root, on_error="raise").samples,
        "sorted-folder Dataset": SortedFolderDataset(root).samples,
    }
    assert len(folder_ds.classes) == 11
    for name, samples in loaders.items():
        got = {Path(p).relative_to(root).as_posix(): y for p, y in samples}
        assert got == csv_label, f"{name} labels differ from the CSV's"
    assert folder_ds.class_to_idx[class_folder_name(10, "Extra class")] == 10


def test_unpadded_numbered_folders_are_refused(tmp_path: Path) -> None:
    for label in range(11):
        (tmp_path / f"{label}_c{label}").mkdir()
        Image.new("L", (28, 28)).save(tmp_path / f"{label}_c{label}" / "a.png")
    # What goes wrong silently without the check: ImageFolder numbers "10_c10" as 1.
    assert datasets.ImageFolder(tmp_path).class_to_idx["10_c10"] == 1
    with pytest.raises(ValueError, match="Zero-pad"):
        PNGFolder(tmp_path)


def test_numbered_order_check() -> None:
    check_numbered_order(["00_a", "01_b", "10_c"])  # padded: fine
    check_numbered_order(["bag", "coat", "dress"])  # not numbered: not checked
    check_numbered_order(["0_a", "1_b", "2_c"])  # unpadded but fewer than 10: fine
    with pytest.raises(ValueError, match=r"'0_a', '1_b', '2_c', '10_k'"):
        check_numbered_order(["0_a", "10_k", "1_b", "2_c"])
    check_numbered_order(["00_a", "10_b", "a-x", "a5", "misc"])  # padding changes no order
    for names in (["0_a", "10_k", "1_b", "misc"], ["c10", "c2"], ["b", "c10", "c9"]):
        with pytest.raises(ValueError, match="Zero-pad the numbers"):
            check_numbered_order(names)


def test_numbered_folders_beside_an_unnumbered_one_are_refused(tmp_path: Path) -> None:
    """The guard used to run only when every folder was numbered: one ``misc/`` switched it
    off, and ``10_c10`` got label 1, silently."""
    for name in [*(f"{c}_c{c}" for c in range(12)), "misc"]:
        (tmp_path / name).mkdir()
        Image.new("L", (28, 28)).save(tmp_path / name / "a.png")
    assert datasets.ImageFolder(tmp_path).class_to_idx["10_c10"] == 1
    with pytest.raises(ValueError, match="Zero-pad"):
        PNGFolder(tmp_path)
    for c in range(12):  # padded, the guard does not fire: ImageFolder's labels
        (tmp_path / f"{c}_c{c}").rename(tmp_path / class_folder_name(c, f"c{c}"))
    assert PNGFolder(tmp_path).class_to_idx == datasets.ImageFolder(tmp_path).class_to_idx


def test_class_folder_name_refuses_labels_that_do_not_fit() -> None:
    assert class_folder_name(3, "T-shirt/top") == "03_T-shirt-top"
    assert class_folder_name(3, "Ankle boot", digits=3) == "003_Ankle-boot"
    for label in (-1, 100):
        with pytest.raises(ValueError, match="digit"):
            class_folder_name(label, "x")


def test_pil_and_opencv_read_the_same_pixels(exported: Path) -> None:
    for path in sorted(exported.rglob("*.png"))[:5]:
        assert np.array_equal(read_png_pil(path), read_png_cv2(path))


def test_opencv_missing_file_is_an_error_not_none(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="missing.png"):
        read_png_cv2(tmp_path / "missing.png")


# --- bad input: one policy each ----------------------------------------------------------------


def test_missing_root() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PNGFolder("no/such/folder")


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        PNGFolder(tmp_path / "f.png")


def test_root_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no class folders"):
        PNGFolder(tmp_path)


def test_bad_option() -> None:
    with pytest.raises(ValueError, match="on_error"):
        PNGFolder(".", on_error="ignore")  # type: ignore[arg-type]


def test_skip_policy_reports_every_bad_file(bad_root: tuple[Path, dict[str, str]]) -> None:
    root, expected = bad_root
    ds = PNGFolder(root, on_error="skip")
    kept = {Path(p).name for p, _ in ds.samples}
    reasons = _reasons(ds)
    assert kept == {n for n, o in expected.items() if o == "ok"} | {"a.png"}
    for name, outcome in expected.items():
        if outcome == "bad":
            kind = "folder" if (root / "0_mixed" / name).is_dir() else "file"
            assert reasons[name].startswith(f"bad {kind}, skipped"), name
        elif outcome == "ignored":
            assert "ignored" in reasons[name], name
    assert "truncated" in reasons["truncated.png"]
    assert "not an image" in reasons["not_an_image.png"]
    assert "JPEG, not PNG" in reasons["as_jpeg.png"]
    assert "EPS, not PNG" in reasons["as_eps.png"]
    assert "too large, not decoded" in reasons["bomb.png"]
    assert "folder inside a class folder" in reasons["subfolder"]
    assert "nested.png" not in kept
    assert "broken symbolic link" in reasons.get("broken_link.png", "broken symbolic link")
    assert reasons["wrong_size.png"].startswith("bad file, skipped: size 32×32, expected 28×28")
    assert reasons[".DS_Store"] == "hidden file: ignored"
    assert reasons["._good.png"] == "hidden file: ignored"  # macOS AppleDouble, PNG-named
    assert reasons["notes.txt"] == "not a .png file: ignored"
    assert reasons["2_empty"].startswith("empty class folder")
    assert reasons[".hidden_folder"] == "hidden folder: ignored"
    # the report carries paths relative to the root, and works as a table
    frame = ds.report_frame()
    assert list(frame.columns) == ["path", "reason"]
    assert "0_mixed/truncated.png" in frame.path.tolist()


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file name that is not UTF-8")
def test_report_frame_shows_a_name_that_is_not_utf8(exported: Path) -> None:
    folder = os.fsencode(exported / class_folder_name(0, "T-shirt-top"))
    with open(os.path.join(folder, b"bad\xff.png"), "wb") as f:  # empty: a bad file
        f.write(b"")
    frame = PNGFolder(exported).report_frame()  # was UnicodeEncodeError (surrogates)
    assert "00_T-shirt-top/bad\\xff.png" in frame.path.tolist(), frame
    assert "bad\\xff.png" in frame.to_string()


def test_empty_class_folder_keeps_label_numbering(bad_root: tuple[Path, dict[str, str]]) -> None:
    root, _ = bad_root
    ds = PNGFolder(root)
    assert ds.classes == ["0_mixed", "1_clean", "2_empty"]
    assert ds.class_to_idx == {"0_mixed": 0, "1_clean": 1, "2_empty": 2}
    # torchvision's ImageFolder makes a hidden folder (.ipynb_checkpoints, say) a class, which
    # shifts every label, and by default refuses a folder with an empty class.
    ref = datasets.ImageFolder(root, allow_empty=True)
    assert ref.class_to_idx[".hidden_folder"] == 0 and ref.class_to_idx["2_empty"] == 3
    with pytest.raises(FileNotFoundError):
        datasets.ImageFolder(root)
    (root / ".hidden_folder").rmdir()
    assert datasets.ImageFolder(root, allow_empty=True).class_to_idx == ds.class_to_idx


def test_raise_policy_lists_every_bad_file(bad_root: tuple[Path, dict[str, str]]) -> None:
    root, expected = bad_root
    with pytest.raises(BadImageError) as err:
        PNGFolder(root, on_error="raise")
    message = str(err.value)
    n_bad = sum(outcome == "bad" for outcome in expected.values())
    assert message.startswith(f"{n_bad - 1} bad file(s) and 1 bad folder(s)")  # subfolder/
    assert "on_error='skip'" in message  # says what to do
    for name, outcome in expected.items():
        assert (name in message) == (outcome == "bad"), name


def test_converted_modes_give_the_original_grey_pixels(
    bad_root: tuple[Path, dict[str, str]], small: FashionMNISTTensors
) -> None:
    root, _ = bad_root
    good = small.images[0].numpy()
    for name, mode in [("rgba", "RGBA"), ("sixteen_bit", "I;16"), ("palette", "P")]:
        path = root / "0_mixed" / f"{name}.png"
        assert Image.open(path).mode == mode
        assert np.array_equal(np.asarray(load_grey(path)), good), name


def test_rgba_transparency_is_black_background(tmp_path: Path) -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = 200  # bright colour ...
    rgba[:14, :, 3] = 255  # ... opaque in the top half, transparent in the bottom half
    Image.fromarray(rgba).save(tmp_path / "x.png")
    grey = np.asarray(load_grey(tmp_path / "x.png"))
    assert (grey[:14] == 200).all() and (grey[14:] == 0).all()


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    grey = np.asarray(load_grey(tmp_path / "x.png"))
    assert grey.min() == 0 and grey.max() == 255
    assert len(np.unique(grey)) > 200  # PIL's plain convert("L") would clip most to 255


def test_wrong_size_accepted_when_asked(bad_root: tuple[Path, dict[str, str]]) -> None:
    root, _ = bad_root
    ds = PNGFolder(root, expected_size=None, transform=transforms.ToTensor())
    assert "wrong_size.png" in {Path(p).name for p, _ in ds.samples}


def test_file_corrupted_after_the_scan_names_the_file(exported: Path) -> None:
    ds = PNGFolder(exported)
    path = Path(ds.samples[3][0])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BadImageError, match=path.name):
        ds[3]


# --- workers -----------------------------------------------------------------------------------


def test_pickles_and_loads_with_two_workers(exported: Path) -> None:
    ds = PNGFolder(exported)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[5][0], ds[5][0])
    batches0 = list(DataLoader(ds, batch_size=8, num_workers=0))
    batches2 = list(DataLoader(ds, batch_size=8, num_workers=2))
    assert len(batches0) == len(batches2) == 4
    for (x0, y0), (x2, y2) in zip(batches0, batches2, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_a_bad_file_in_a_worker_is_reported_with_its_path(exported: Path) -> None:
    ds = PNGFolder(exported)
    path = Path(ds.samples[0][0])
    path.write_bytes(b"not a png")
    with pytest.raises(BadImageError, match=path.name):
        list(DataLoader(ds, batch_size=4, num_workers=2))


# --- hostile or misplaced input: skipped or raised per on_error, named in the report ------------


@pytest.fixture
def one_class(tmp_path: Path, small: FashionMNISTTensors) -> Path:
    """``root/00_a/good.png`` and ``root/01_b/good.png``: a clean folder to add one problem to."""
    for label in range(2):
        (tmp_path / f"0{label}_c").mkdir()
        Image.fromarray(small.images[label].numpy()).save(tmp_path / f"0{label}_c" / "good.png")
    return tmp_path


def _skipped_and_raised(root: Path, rel: str, words: str, **kwargs: object) -> PNGFolder:
    """Build ``root`` both ways: skipped, ``rel`` is in the report with ``words``; raised, the
    error names ``rel`` with ``words``. Returns the skipping dataset."""
    ds = PNGFolder(root, on_error="skip", **kwargs)  # type: ignore[arg-type]
    reasons = {s.path: s.reason for s in ds.report}
    assert rel in reasons, f"{rel} not in the report {reasons}"
    assert words in reasons[rel] and reasons[rel].startswith("bad "), reasons[rel]
    assert str(root) not in reasons[rel], f"the reason repeats the path: {reasons[rel]}"
    assert all(Path(p).relative_to(root).as_posix() != rel for p, _ in ds.samples)
    with pytest.raises(BadImageError) as err:
        PNGFolder(root, on_error="raise", **kwargs)  # type: ignore[arg-type]
    assert f"{rel}: " in str(err.value) and words in str(err.value)
    return ds


@pytest.mark.slow
def test_decompression_bomb_is_refused_by_name(one_class: Path) -> None:
    """30000×30000 pixels in ~110 KB: Pillow's own guard raises inside ``Image.open``, which
    used to escape the constructor without a file name, even with ``on_error="skip"``."""
    size = write_decompression_bomb(one_class / "00_c" / "bomb.png")
    assert size < 200_000
    for expected_size in [(28, 28), None]:
        ds = _skipped_and_raised(
            one_class, "00_c/bomb.png", "too large, not decoded", expected_size=expected_size
        )
        assert len(ds) == 2


@pytest.mark.slow
def test_size_is_checked_from_the_header_before_decoding(one_class: Path) -> None:
    """Files that hold only a header (no pixel data at all): decoding them would fail as
    truncated, so "too large" and "size …" prove nothing was decoded. 5000×5000 is below
    Pillow's guard (~89 megapixels), so the course's own budget is what refuses it."""
    for name, (w, h) in {"big.png": (5000, 5000), "small.png": (32, 32)}.items():
        full = write_decompression_bomb(one_class / "01_c" / name, w, h)
        data = (one_class / "01_c" / name).read_bytes()
        (one_class / "01_c" / name).write_bytes(data[:33] + data[full - 12 :])  # IHDR + IEND
    _skipped_and_raised(one_class, "01_c/big.png", "5000×5000 = 25,000,000 pixels, more than")
    _skipped_and_raised(one_class, "01_c/small.png", "size 32×32, expected 28×28")
    ds = PNGFolder(one_class, expected_size=None, max_pixels=26_000_000)
    reasons = {s.path: s.reason for s in ds.report}
    assert "truncated" in reasons["01_c/big.png"]  # allowed: now it is decoded, and fails


@pytest.mark.slow  # ten folder scans: about 10 s
def test_other_formats_named_png_never_reach_their_parser(
    one_class: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only Pillow's PNG parser may read a file (``formats=["PNG"]``): an EPS would otherwise be
    handed to Ghostscript. Every other parser is replaced by a spy that records its calls."""
    folder = one_class / "00_c"
    grey = Image.open(folder / "good.png")
    grey.save(folder / "as_gif.png", format="GIF")
    grey.save(folder / "as_bmp.png", format="BMP")
    grey.save(folder / "as_tiff.png", format="TIFF")
    grey.convert("RGB").save(folder / "as_jpeg.png", format="JPEG")
    (folder / "as_eps.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n")
    called: list[str] = []

    def spy(fmt: str):  # noqa: ANN202
        def factory(*args: object) -> None:
            called.append(fmt)
            raise SyntaxError(f"{fmt} parser ran")

        return factory

    Image.init()
    for fmt, (_, accept) in list(Image.OPEN.items()):
        if fmt != "PNG":
            monkeypatch.setitem(Image.OPEN, fmt, (spy(fmt), accept))
    for name, kind in [("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF"), ("jpeg", "JPEG")]:
        _skipped_and_raised(one_class, f"00_c/as_{name}.png", f"the file is {kind}, not PNG")
    _skipped_and_raised(one_class, "00_c/as_eps.png", "the file is EPS, not PNG")
    assert called == []


def test_a_folder_inside_a_class_folder(one_class: Path) -> None:
    nested = one_class / "00_c" / "more"
    nested.mkdir()
    (nested / "x.png").write_bytes((one_class / "00_c" / "good.png").read_bytes())
    ds = _skipped_and_raised(one_class, "00_c/more", "folder inside a class folder")
    assert ds.report[-1].reason.startswith("bad folder, skipped")
    # ImageFolder walks into it and gives its files the class's label: not silently here.
    assert any(p.endswith("more/x.png") for p, _ in datasets.ImageFolder(one_class).samples)


def test_a_png_at_the_root_has_no_class(one_class: Path) -> None:
    (one_class / "stray.png").write_bytes((one_class / "00_c" / "good.png").read_bytes())
    (one_class / "README.md").write_text("not data\n")
    ds = _skipped_and_raised(one_class, "stray.png", "at the root, outside any class folder")
    assert Skipped("README.md", "not a .png file: ignored") in ds.report
    assert "stray.png" not in str(datasets.ImageFolder(one_class).samples)  # silently ignored


def test_broken_symbolic_links(one_class: Path) -> None:
    folder = one_class / "00_c"
    (folder / "dangling.png").symlink_to("deleted.png")
    (folder / "linked.png").symlink_to("good.png")  # a valid link is followed, as ImageFolder
    ds = _skipped_and_raised(one_class, "00_c/dangling.png", "broken symbolic link")
    assert [Path(p).name for p, _ in ds.samples] == ["good.png", "linked.png", "good.png"]
    (folder / "good.png").unlink()  # the link breaks after the scan: __getitem__ names it
    with pytest.raises(BadImageError, match=r"linked\.png: broken symbolic link"):
        ds[1]


def test_a_class_whose_every_image_is_bad(one_class: Path) -> None:
    (one_class / "01_c" / "good.png").write_bytes(b"broken")
    (one_class / "01_c" / "half.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    ds = _skipped_and_raised(one_class, "01_c/half.png", "the PNG header is broken")
    assert ds.classes == ["00_c", "01_c"] and ds.targets == [0]  # labels stay stable
    assert Skipped("01_c", "every .png in it is bad: class kept, no images") in ds.report
    assert "01_c/good.png" in {s.path for s in ds.report}


def test_no_usable_image_at_all_is_a_clear_error(one_class: Path) -> None:
    for label in range(2):
        (one_class / f"0{label}_c" / "good.png").write_bytes(b"")
    (one_class / "02_c").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable image") as err:
        PNGFolder(one_class, on_error="skip")
    for rel in ["00_c/good.png", "01_c/good.png", "02_c"]:
        assert f"\n  {rel}: " in str(err.value), rel
    with pytest.raises(BadImageError, match="2 bad file"):
        PNGFolder(one_class, on_error="raise")
