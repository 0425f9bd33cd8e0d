"""Checks of the chapter 7 exercises: a hand-written transform, a seeded DataLoader, and a PNG
Dataset with a bad-file policy and a label order that survives more than ten classes."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._common import (
    aliases,
    call,
    failure,
    passed,
    refuse,
)

__all__ = [
    "check_png_dataset",
    "check_seeded_loader",
    "check_to_tensor",
]


# --- 7.1 ---------------------------------------------------------------------------------------


def _transform_shortcuts() -> list[tuple[object, str]]:
    from torchvision import transforms
    from torchvision.transforms import functional

    from .. import data

    return [
        (transforms, "ToTensor"),
        (transforms, "Normalize"),
        (transforms, "PILToTensor"),
        (functional, "to_tensor"),
        (functional, "normalize"),
        (data, "standard_transform"),
    ]


def check_to_tensor(fn: Callable[[Image.Image], torch.Tensor]) -> None:
    """Exercise 7.1: ``fn(image)`` turns an 8-bit grey PIL image into what ``ToTensor`` then
    ``Normalize(MEAN, STD)`` give: float32 ``[1, H, W]``, ``(pixel / 255 − MEAN) / STD``.

    Verified on a random image, an all-black and an all-white one (a 28×28 and a 20×24), against
    :func:`course_utils.data.standard_transform`; torchvision's ToTensor/Normalize are switched
    off while ``fn`` runs.
    """
    from ..data import MEAN, STD, standard_transform

    ex = "7.1"
    g = np.random.default_rng(0)
    images = {
        "a random 28×28 image": Image.fromarray(g.integers(0, 256, (28, 28), dtype=np.uint8)),
        "an all-black 28×28 image": Image.fromarray(np.zeros((28, 28), dtype=np.uint8)),
        "an all-white 20×24 image": Image.fromarray(np.full((20, 24), 255, dtype=np.uint8)),
    }
    reference = standard_transform()
    expected = {case: reference(image) for case, image in images.items()}
    shortcuts = _transform_shortcuts()
    with refuse(ex, [*shortcuts, *aliases([fn], shortcuts)], "the transform"):
        got = {
            case: call(ex, f"fn on {case}", fn, image, hint="see the task text.")
            for case, image in images.items()
        }
    for case, out in got.items():
        ref = expected[case]
        if not isinstance(out, torch.Tensor):
            raise failure(ex, f"on {case} returned {type(out).__name__}", "return a tensor.")
        if tuple(out.shape) != tuple(ref.shape):
            raise failure(
                ex,
                f"on {case}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}",
                "add the channel dimension in front: [1, H, W] (x[None] or unsqueeze(0)), "
                "with H the image's height (PIL's size is (width, height)).",
            )
        if out.dtype != torch.float32:
            raise failure(
                ex,
                f"on {case}: dtype {out.dtype}, expected torch.float32",
                "convert with .float() (float32): the model's weights are float32.",
            )
    for case, out in got.items():  # values only once every shape is right
        ref = expected[case]
        if torch.allclose(out, ref, atol=1e-5):
            continue
        raw = torch.from_numpy(np.asarray(images[case], dtype=np.float32))[None]
        if torch.allclose(out, raw / 255, atol=1e-5):
            hint = f"then normalise: (x − {MEAN}) / {STD}, Fashion-MNIST's mean and std."
        elif torch.allclose(out, (raw - MEAN) / STD, atol=1e-3):
            hint = "divide the 0–255 pixels by 255 first, then normalise."
        else:
            hint = "x = pixels / 255, then (x − MEAN) / STD, with MEAN and STD from data."
        at = (out - ref).abs().argmax()
        raise failure(
            ex,
            f"on {case}: value {out.flatten()[at]:.4f} at index {int(at)}, expected "
            f"{ref.flatten()[at]:.4f}",
            hint,
        )
    passed(ex, "matches ToTensor + Normalize on 3 images (random, black, white 20×24)")


# --- 7.2 ---------------------------------------------------------------------------------------


class _Indices(torch.utils.data.Dataset):
    """``n`` items whose label is their own index, to read a loader's order off its batches."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 2, 2), float(i)), i


def _epoch_orders(loader: Any, epochs: int) -> list[list[int]]:
    return [[int(i) for _, y in loader for i in y] for _ in range(epochs)]


def check_seeded_loader(fn: Callable[..., Any]) -> None:
    """Exercise 7.2: ``fn(dataset, batch_size, seed)`` returns a shuffling loader whose order is
    a function of ``seed`` alone: the same seed gives the same epochs whatever the global RNG
    did, another seed another order, each epoch a new permutation, and the global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):  # the check reseeds; the caller's RNG is kept
        _check_seeded_loader(fn)


def _check_seeded_loader(fn: Callable[..., Any]) -> None:
    ex = "7.2"
    dataset, batch_size = _Indices(37), 8
    hint_make = "return DataLoader(dataset, batch_size, shuffle=True, generator=...)."

    def run(seed: int, global_seed: int) -> tuple[list[list[int]], list[int]]:
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        loader = call(
            ex, f"fn(dataset, {batch_size}, {seed})", fn, dataset, batch_size, seed, hint=hint_make
        )
        if not torch.equal(state, torch.get_rng_state()):
            raise failure(
                ex,
                f"fn(dataset, {batch_size}, {seed}) changed the global RNG",
                "do not call torch.manual_seed here: it resets every other random draw of the "
                "program; give the DataLoader its own torch.Generator().manual_seed(seed).",
            )
        torch.manual_seed(global_seed + 1)
        state = torch.get_rng_state()
        sizes = [len(y) for _, y in loader]
        orders = _epoch_orders(loader, 2)
        moved.append(not torch.equal(state, torch.get_rng_state()))
        return orders, sizes

    moved: list[bool] = []
    first, sizes = run(seed=3, global_seed=100)
    expected_sizes = [batch_size] * (len(dataset) // batch_size) + [len(dataset) % batch_size]
    if sizes != expected_sizes:
        raise failure(
            ex,
            f"batch sizes {sizes}, expected {expected_sizes}",
            "pass batch_size to the DataLoader (and keep the last, smaller batch).",
        )
    for epoch, order in enumerate(first):
        if sorted(order) != list(range(len(dataset))):
            raise failure(
                ex,
                f"epoch {epoch} is not a permutation of the {len(dataset)} items",
                "shuffle without replacement: shuffle=True.",
            )
    if first[0] == list(range(len(dataset))):
        raise failure(ex, "the first epoch is in dataset order", "pass shuffle=True.")
    again, _ = run(seed=3, global_seed=200)
    if again != first:
        raise failure(
            ex,
            "two loaders built with seed=3 gave different orders once the global seed "
            f"differed (first batch {first[0][:batch_size]} vs {again[0][:batch_size]})",
            "the order must depend on seed alone: generator=torch.Generator().manual_seed(seed).",
        )
    if first[0] == first[1]:
        raise failure(
            ex,
            "epoch 1 repeats epoch 0's order",
            "create the generator once per loader (not per epoch): it moves on each epoch, "
            "so every epoch is a new permutation, reproducible from the seed.",
        )
    other, _ = run(seed=4, global_seed=100)
    if other[0] == first[0]:
        raise failure(ex, "seed=4 gave the same order as seed=3", "seed the generator with `seed`.")
    if any(moved):
        raise failure(
            ex,
            "iterating your loader drew from the global RNG",
            "pass generator=torch.Generator().manual_seed(seed) to the DataLoader itself: "
            "without it, the DataLoader draws its workers' base seed from the global RNG.",
        )
    passed(
        ex,
        "same seed → same epochs whatever the global RNG; new order per epoch and per seed; "
        "global RNG untouched",
    )


# --- 7.3 ---------------------------------------------------------------------------------------

N_CLASSES = 11  # > 10: unpadded "10_…" sorts as text between "1_…" and "2_…"
BAD_FILES = ("truncated.png", "zz_not_an_image.png")
BAD_CLASS = 3


def _png_fixture(root: Path, padded: bool, bad: bool) -> dict[tuple[int, str], Path]:
    """11 numbered class folders of 28×28 grey PNGs; returns ``{(label, file name): path}``.

    Folder ``c`` is ``f"{c}_c{c}"`` (or zero-padded ``f"{c:02d}_c{c}"``). With ``bad``, class 3
    also holds a truncated PNG, a text file named ``.png`` and a ``notes.txt``.
    """
    g = np.random.default_rng(0)
    good: dict[tuple[int, str], Path] = {}
    for c in range(N_CLASSES):
        folder = root / (f"{c:02d}_c{c}" if padded else f"{c}_c{c}")
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = g.integers(0, 256, (28, 28), dtype=np.uint8)
            pixels[c * 2 : c * 2 + 3] = 255 - c * 20  # a per-class stripe
            path = folder / f"img_{1 - i}.png"  # written out of name order
            Image.fromarray(pixels).save(path)
            good[(c, path.name)] = path
        if bad and c == BAD_CLASS:
            full = (folder / "img_0.png").read_bytes()
            (folder / BAD_FILES[0]).write_bytes(full[: len(full) // 2])
            (folder / BAD_FILES[1]).write_bytes(b"not an image, whatever its name says\n")
            (folder / "notes.txt").write_text("a stray text file\n")
    return good


def _dataset_shortcuts() -> list[tuple[object, str]]:
    import torchvision.datasets
    import torchvision.datasets.folder

    from .. import pngfolder

    return [
        (pngfolder, "PNGFolder"),
        (pngfolder, "load_grey"),
        (pngfolder, "check_numbered_order"),
        (torchvision.datasets, "ImageFolder"),
        (torchvision.datasets, "DatasetFolder"),
        (torchvision.datasets.folder, "ImageFolder"),
        (torchvision.datasets.folder, "DatasetFolder"),
        (torchvision.datasets.folder, "find_classes"),
        (torchvision.datasets.folder, "make_dataset"),
    ]


def check_png_dataset(dataset_cls: Callable[..., Any]) -> None:
    """Exercise 7.3: ``dataset_cls(root, on_error=...)`` over 11 numbered class folders.

    Verified: with zero-padded names, item-by-item parity with ``ImageFolder`` (computed before
    the shortcuts are switched off); with unpadded names (``10_c10`` sorts before ``2_c2`` as
    text), labels by the folders' numbers; with a truncated PNG and a text file named ``.png``,
    ``on_error="skip"`` leaves both out and lists them in ``skipped``, ``on_error="raise"``
    raises at construction with the bad file's path in the message; another policy is a
    ``ValueError``. ``PNGFolder``, ``ImageFolder`` and ``DatasetFolder`` are switched off while
    the dataset is built and read.
    """
    from torchvision import datasets, transforms

    from ..data import standard_transform

    ex = "7.3"
    shortcuts = _dataset_shortcuts()
    refused = [*shortcuts, *aliases([dataset_cls], shortcuts)]
    with tempfile.TemporaryDirectory() as tmp:
        padded_root, plain_root = Path(tmp) / "padded", Path(tmp) / "unpadded"
        _png_fixture(padded_root, padded=True, bad=False)
        good = _png_fixture(plain_root, padded=False, bad=True)
        reference = datasets.ImageFolder(
            padded_root,
            transform=transforms.Compose([transforms.Grayscale(1), standard_transform()]),
        )
        ref_items = [reference[i] for i in range(len(reference))]
        pixels = {
            (label, Path(path).name): x
            for (path, label), (x, _) in zip(reference.samples, ref_items, strict=True)
        }
        with refuse(ex, refused, "the dataset"):
            _check_padded(ex, dataset_cls, padded_root, reference, ref_items)
            _check_unpadded(ex, dataset_cls, plain_root, good, pixels)
            _check_raise_policy(ex, dataset_cls, plain_root)
            _check_unknown_policy(ex, dataset_cls, padded_root)
    passed(
        ex,
        f"{N_CLASSES} classes: parity with ImageFolder (padded names), labels by number "
        "(unpadded), bad files skipped and listed, or raised with their path",
    )


def _build(ex: str, dataset_cls: Callable[..., Any], root: Path, on_error: str) -> Any:
    return call(
        ex,
        f"{getattr(dataset_cls, '__name__', 'dataset_cls')}(root, on_error={on_error!r}) "
        f"on the {root.name} folders",
        dataset_cls,
        root,
        on_error=on_error,
        hint="see the task text.",
    )


def _items(ex: str, ds: Any, where: str) -> list[tuple[Any, Any]]:
    n = call(ex, f"len() {where}", len, ds, hint="return len(self.samples).")
    return [
        call(ex, f"dataset[{i}] {where}", ds.__getitem__, i, hint="see the task text.")
        for i in range(n)
    ]


def _check_padded(
    ex: str, dataset_cls: Callable[..., Any], root: Path, reference: Any, ref_items: list
) -> None:
    ds = _build(ex, dataset_cls, root, "raise")
    where = "on zero-padded folders 00_c0 … 10_c10"
    items = _items(ex, ds, where)
    if len(items) != len(ref_items):
        raise failure(
            ex,
            f"{where}: len() is {len(items)}, ImageFolder finds {len(ref_items)}",
            "one sample per .png file of every class folder.",
        )
    if list(getattr(ds, "classes", [])) != list(reference.classes):
        raise failure(
            ex,
            f"{where}: classes {getattr(ds, 'classes', None)}, expected {reference.classes}",
            "self.classes: the class folder names, in label order.",
        )
    for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(items, ref_items, strict=True)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(x_ref.shape):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise failure(
                ex,
                f"{where}: item {i} is {shape}, expected a tensor of shape {tuple(x_ref.shape)}",
                "open with PIL, .convert('L'), then apply self.transform.",
            )
        if int(y) != y_ref:
            raise failure(
                ex,
                f"{where}: item {i} has label {int(y)}, expected {y_ref} "
                f"({reference.samples[i][0].split('/')[-2]})",
                "samples go class by class in label order, files sorted by name.",
            )
        if not torch.allclose(x, x_ref, atol=1e-6):
            raise failure(
                ex,
                f"{where}: item {i}'s pixels differ from ImageFolder's "
                f"({Path(reference.samples[i][0]).name})",
                "apply self.transform (ToTensor + Normalize) to the 8-bit grey image of "
                "self.samples[i]; sort the files by name.",
            )


def _check_unpadded(
    ex: str,
    dataset_cls: Callable[..., Any],
    root: Path,
    good: dict[tuple[int, str], Path],
    pixels: dict[tuple[int, str], torch.Tensor],
) -> None:
    ds = _build(ex, dataset_cls, root, "skip")
    where = "on unpadded folders 0_c0 … 10_c10 with 2 bad files"
    expected_classes = [f"{c}_c{c}" for c in range(N_CLASSES)]
    classes = list(getattr(ds, "classes", []))
    if classes != expected_classes:
        hint = (
            "sorted as text, '10_c10' comes before '2_c2' and every later label shifts: when "
            "every folder starts with a number and '_', order them by that number "
            "(key=lambda name: int(name.split('_')[0]))."
            if classes == sorted(expected_classes)
            else "self.classes: the class folder names, ordered by their number."
        )
        raise failure(ex, f"{where}: classes {classes}, expected {expected_classes}", hint)
    samples = [(Path(p).name, int(label)) for p, label in getattr(ds, "samples", [])]
    kept_bad = sorted({name for name, _ in samples} & set(BAD_FILES))
    if kept_bad:
        raise failure(
            ex,
            f"{where}: on_error='skip' kept the bad file(s) {kept_bad}",
            "decode every file in __init__ (img.load() or .convert('L') inside the try: "
            "Image.open only reads the header) and leave out those that fail.",
        )
    expected = sorted(good, key=lambda key: key)
    if len(samples) != len(expected):
        raise failure(
            ex,
            f"{where}: {len(samples)} samples, expected {len(expected)} good .png files",
            "one sample per readable .png file; ignore other files (notes.txt).",
        )
    skipped = {Path(str(p)).name for p in getattr(ds, "skipped", [])}
    if not set(BAD_FILES) <= skipped:
        raise failure(
            ex,
            f"{where}: self.skipped lists {sorted(skipped)}, expected both of {list(BAD_FILES)}",
            "append the path of every file you leave out to self.skipped.",
        )
    items = _items(ex, ds, where)
    for i, (x, y) in enumerate(items):
        label, name = expected[i]
        if int(y) != label:
            raise failure(
                ex,
                f"{where}: item {i} ({expected_classes[label]}/{name}) has label {int(y)}, "
                f"expected {label}",
                "the label is the class's position in self.classes (its number).",
            )
        if not isinstance(x, torch.Tensor) or not torch.allclose(
            x, pixels[(label, name)], atol=1e-6
        ):
            raise failure(
                ex,
                f"{where}: item {i}'s pixels are not those of {expected_classes[label]}/{name}",
                "files sorted by name within each class; apply self.transform.",
            )


def _check_raise_policy(ex: str, dataset_cls: Callable[..., Any], root: Path) -> None:
    where = "with on_error='raise' on a folder with a truncated PNG"
    bad_paths = [root / f"{BAD_CLASS}_c{BAD_CLASS}" / name for name in BAD_FILES]
    names = [str(p) for p in bad_paths] + [p.relative_to(root).as_posix() for p in bad_paths]
    try:
        ds = dataset_cls(root, on_error="raise")
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        if not any(name in str(err) for name in names):
            raise failure(
                ex,
                f"{where}: {type(err).__name__}: {str(err)[:160]!r} does not name the bad file",
                "raise BadImageError(f'{path}: {err}') from the PIL error, with the full "
                "path, so the one broken file among thousands can be found.",
            ) from err
        return
    raise failure(
        ex,
        f"{where}: the dataset was built without an error ({len(ds)} samples)",
        "with on_error='raise', raise BadImageError in __init__ at the first file that "
        "fails to decode.",
    )


def _check_unknown_policy(ex: str, dataset_cls: Callable[..., Any], root: Path) -> None:
    try:
        dataset_cls(root, on_error="ignore")
    except ValueError:
        return
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise failure(
            ex,
            f"on_error='ignore' raised {type(err).__name__}: {err}",
            "refuse an unknown policy with a ValueError naming the allowed ones.",
        ) from err
    raise failure(
        ex,
        "on_error='ignore' (a typo for a policy) was accepted silently",
        "raise ValueError(f\"on_error must be 'skip' or 'raise', got {on_error!r}\").",
    )
