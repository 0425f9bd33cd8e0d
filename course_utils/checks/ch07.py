"""Checks of the chapter 7 exercises: a transform, a seeded DataLoader and a PNG Dataset."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision import transforms
from torchvision.transforms import functional

from .. import data, pngfolder
from ..data import MEAN, STD, standard_transform
from ._common import aliases, call, passed, raise_first, refuse

__all__ = ["check_png_dataset", "check_seeded_loader", "check_to_tensor"]

N_CLASSES = 11  # > 10: unpadded "10_…" sorts as text between "1_…" and "2_…"
BAD_FILES = ("truncated.png", "zz_not_an_image.png")  # in class 3 of the unpadded folders


def _mismatch(got: Any, want: torch.Tensor, atol: float) -> str:
    """How ``got`` differs from ``want``, in ``assert_close``'s words on one line; "" if not."""
    try:
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)
    except (AssertionError, TypeError) as err:
        lines = str(err).splitlines()
        return " ".join([lines[0], *(line for line in lines if line.startswith("Greatest abs"))])
    return ""


def _raised(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Exception | None:
    """The exception ``fn(*args, **kwargs)`` raised, if any; blanks and refusals pass through."""
    try:
        fn(*args, **kwargs)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        return err
    return None


def _transform_hint(out: Any, ref: torch.Tensor, raw: torch.Tensor) -> str:
    if not isinstance(out, torch.Tensor):
        return "return a tensor."
    if out.shape != ref.shape:
        return "add the channel dimension in front, [1, H, W]: PIL's size is (width, height)."
    if out.dtype != torch.float32:
        return "convert with .float() (float32): the model's weights are float32."
    if torch.allclose(out, raw / 255, atol=1e-3):
        return f"then normalise: (x − {MEAN}) / {STD}, Fashion-MNIST's mean and std."
    if torch.allclose(out, (raw - MEAN) / STD, atol=1e-3):
        return "divide the 0–255 pixels by 255 first, then normalise."
    return "x = pixels / 255, then (x − MEAN) / STD, with MEAN and STD from course_utils.data."


def check_to_tensor(fn: Callable[[Image.Image], torch.Tensor]) -> None:
    """Exercise 7.1: ``fn(image)`` equals ToTensor + Normalize on three 8-bit grey images."""
    ex, g = "7.1", np.random.default_rng(0)
    images = {  # the non-square one first: a height/width swap shows as a wrong shape
        "an all-white 20×24 image": np.full((20, 24), 255, dtype=np.uint8),
        "a random 28×28 image": g.integers(0, 256, (28, 28), dtype=np.uint8),
        "an all-black 28×28 image": np.zeros((28, 28), dtype=np.uint8),
    }
    shortcuts = [(transforms, n) for n in ("ToTensor", "Normalize", "PILToTensor")]
    shortcuts += [
        (functional, "to_tensor"),
        (functional, "normalize"),
        (data, "standard_transform"),
    ]
    for case, pixels in images.items():
        image, ref = Image.fromarray(pixels), standard_transform()(Image.fromarray(pixels))
        with refuse(ex, [*shortcuts, *aliases([fn], shortcuts)], "the transform"):
            out = call(ex, f"fn on {case}", fn, image, hint="see the task text.")
        raw = torch.from_numpy(pixels.astype(np.float32))[None]
        differs = _mismatch(out, ref, atol=1e-5)
        raise_first(ex, (differs, f"on {case}: {differs}", _transform_hint(out, ref, raw)))
    passed(ex, "matches ToTensor + Normalize on 3 images (random, black, white 20×24)")


def check_seeded_loader(fn: Callable[..., Any]) -> None:
    """Exercise 7.2: ``fn(dataset, batch_size, seed)`` shuffles in an order set by seed alone."""
    ex, n, size = "7.2", 37, 8
    dataset, built, drew = TensorDataset(torch.zeros(n, 1, 2, 2), torch.arange(n)), [], []
    hint = "return DataLoader(dataset, batch_size, shuffle=True, generator=...)."

    def run(seed: int, global_seed: int) -> tuple[list[list[int]], list[int]]:
        """Two epochs' orders and the first epoch's batch sizes; notes global RNG draws."""
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        loader = call(ex, f"fn(dataset, {size}, {seed})", fn, dataset, size, seed, hint=hint)
        now = torch.get_rng_state()
        built.append(not torch.equal(state, now))
        epochs = [[y.tolist() for _, y in loader] for _ in range(2)]
        drew.append(not torch.equal(now, torch.get_rng_state()))
        return [sum(batches, []) for batches in epochs], [len(b) for b in epochs[0]]

    with torch.random.fork_rng(devices=[]):  # the check reseeds; the caller's RNG is kept
        (first, sizes), (again, _), (other, _) = run(3, 100), run(3, 200), run(4, 100)
    hint = "do not call torch.manual_seed here: give the DataLoader its own seeded Generator."
    raise_first(ex, (any(built), "fn(dataset, batch_size, seed) changed the global RNG", hint))
    expected = [size] * (n // size) + [n % size]
    hint = "pass batch_size to the DataLoader (and keep the last, smaller batch)."
    raise_first(ex, (sizes != expected, f"batch sizes {sizes}, expected {expected}", hint))
    hint = "shuffle without replacement: shuffle=True."
    for epoch, order in enumerate(first):
        raise_first(
            ex, (sorted(order) != list(range(n)), f"epoch {epoch} is not a permutation", hint)
        )
    raise_first(
        ex, (first[0] == sorted(first[0]), "epoch 0 is in dataset order", "pass shuffle=True.")
    )
    problem = "two loaders built with seed=3 gave different orders once the global seed differed"
    hint = "the order must depend on seed alone: generator=torch.Generator().manual_seed(seed)."
    raise_first(ex, (again != first, problem, hint))
    hint = "create the generator once per loader (not per epoch): it moves on each epoch."
    raise_first(ex, (first[0] == first[1], "epoch 1 repeats epoch 0's order", hint))
    raise_first(ex, (other[0] == first[0], "seed=4 gave seed=3's order", "seed the generator."))
    hint = "pass the generator to the DataLoader too, or it draws its workers' base seed globally."
    raise_first(ex, (any(drew), "iterating your loader drew from the global RNG", hint))
    passed(
        ex,
        "same seed → same epochs whatever the global RNG; new order per epoch and per seed; "
        "global RNG untouched",
    )


def _png_fixture(root: Path, padded: bool) -> None:
    """11 class folders of two grey PNGs; unpadded, ``3_c3`` also holds BAD_FILES and a .txt."""
    g = np.random.default_rng(0)
    for c in range(N_CLASSES):
        folder = root / (f"{c:02d}_c{c}" if padded else f"{c}_c{c}")
        folder.mkdir(parents=True)
        for i in (1, 0):  # written out of name order
            pixels = g.integers(0, 256, (28, 28), dtype=np.uint8)
            pixels[c * 2 : c * 2 + 3] = 255 - c * 20  # a per-class stripe
            Image.fromarray(pixels).save(folder / f"img_{i}.png")
        if not padded and c == 3:
            full = (folder / "img_0.png").read_bytes()
            (folder / BAD_FILES[0]).write_bytes(full[: len(full) // 2])
            (folder / BAD_FILES[1]).write_bytes(b"not an image, whatever its name says\n")
            (folder / "notes.txt").write_text("a stray text file\n")


def _check_items(ex: str, where: str, ds: Any, classes: list[str], expected: list) -> None:
    """``ds.classes`` and every item of ``ds`` against ``expected`` ``(label, file, pixels)``."""
    got = list(getattr(ds, "classes", []))
    hint = "self.classes: the class folder names, ordered by their number."
    if got == sorted(classes) != classes:
        hint = "as text, '10_c10' sorts before '2_c2': order them by that number (int(...))."
    raise_first(ex, (got != classes, f"{where}: classes {got}, expected {classes}", hint))
    n = call(ex, f"len() {where}", len, ds, hint="return len(self.samples).")
    hint = "one sample per readable .png file of every class folder; ignore other files."
    raise_first(ex, (n != len(expected), f"{where}: len() is {n}, expected {len(expected)}", hint))
    for i, (label, name, pixels) in enumerate(expected):
        x, y = call(ex, f"dataset[{i}] {where}", ds.__getitem__, i, hint="see the task text.")
        problem = f"{where}: item {i} has label {y}, expected {label} ({classes[label]}/{name})"
        hint = "samples go class by class in label order, files sorted by name."
        raise_first(ex, (y != label, problem, hint))
        differs = _mismatch(x, pixels, atol=1e-6)
        hint = "open with PIL, .convert('L'), apply self.transform (ToTensor + Normalize)."
        raise_first(ex, (differs, f"{where}: item {i} ({classes[label]}/{name}): {differs}", hint))


def check_png_dataset(dataset_cls: Callable[..., Any]) -> None:
    """Exercise 7.3: ``dataset_cls(root, on_error=...)`` over 11 numbered class folders, with and
    without zero-padded names and bad files, and with each ``on_error`` policy."""
    ex, folder = "7.3", torchvision.datasets.folder
    shortcuts = [(pngfolder, n) for n in ("PNGFolder", "load_grey", "check_numbered_order")]
    shortcuts += [(torchvision.datasets, "ImageFolder"), (torchvision.datasets, "DatasetFolder")]
    shortcuts += [(folder, "find_classes"), (folder, "make_dataset")]
    name = getattr(dataset_cls, "__name__", "dataset_cls")

    def build(root: Path, policy: str) -> Any:
        what = f"{name}(root, on_error={policy!r}) on the {root.name} folders"
        return call(ex, what, dataset_cls, root, on_error=policy, hint="see the task text.")

    with tempfile.TemporaryDirectory() as tmp:
        padded, plain = Path(tmp) / "padded", Path(tmp) / "unpadded"
        _png_fixture(padded, padded=True), _png_fixture(plain, padded=False)
        grey = transforms.Compose([transforms.Grayscale(1), standard_transform()])
        reference = torchvision.datasets.ImageFolder(padded, transform=grey)
        labelled = enumerate(reference.samples)  # (label, file name, pixels) of every item:
        expected = [(y, Path(p).name, reference[i][0]) for i, (p, y) in labelled]
        with refuse(ex, [*shortcuts, *aliases([dataset_cls], shortcuts)], "the dataset"):
            ds = build(padded, "raise")
            where = "on zero-padded folders 00_c0 … 10_c10"
            _check_items(ex, where, ds, reference.classes, expected)
            ds, where = build(plain, "skip"), "on unpadded folders 0_c0 … 10_c10 with 2 bad files"
            kept = sorted({Path(p).name for p, _ in getattr(ds, "samples", [])} & set(BAD_FILES))
            hint = "decode every file in __init__ (img.load(): Image.open only reads the header)."
            raise_first(ex, (kept, f"{where}: on_error='skip' kept the bad file(s) {kept}", hint))
            skipped = sorted(Path(str(p)).name for p in getattr(ds, "skipped", []))
            problem = f"{where}: self.skipped lists {skipped}, expected {list(BAD_FILES)}"
            hint = "append the path of every file you leave out to self.skipped."
            raise_first(ex, (not set(BAD_FILES) <= set(skipped), problem, hint))
            _check_items(ex, where, ds, [f"{c}_c{c}" for c in range(N_CLASSES)], expected)
            err = _raised(dataset_cls, plain, on_error="raise")
            where = "with on_error='raise' on a folder with a truncated PNG"
            hint = "with on_error='raise', raise BadImageError in __init__ at the first bad file."
            raise_first(ex, (err is None, f"{where}: the dataset was built without an error", hint))
            named = any(f"3_c3/{f}" in str(err).replace("\\", "/") for f in BAD_FILES)
            problem = f"{where}: {str(err)[:160]!r} does not name the bad file"
            hint = "raise BadImageError(f'{path}: {err}') from the PIL error, with the full path."
            raise_first(ex, (not named, problem, hint))
            err = _raised(dataset_cls, padded, on_error="ignore")
            hint = "raise ValueError(f\"on_error must be 'skip' or 'raise', got {on_error!r}\")."
            problem = f"on_error='ignore' (a typo) raised {type(err).__name__}: {err}"
            if err is None:
                problem = "on_error='ignore' (a typo) was accepted silently"
            raise_first(ex, (not isinstance(err, ValueError), problem, hint))
    passed(
        ex,
        f"{N_CLASSES} classes: parity with ImageFolder (padded names), labels by number "
        "(unpadded), bad files skipped and listed, or raised with their path",
    )
