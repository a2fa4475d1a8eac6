"""Segmentation datasets: image/mask folders, per-model preprocessing, box prompts and splits.

A dataset is a folder ``root/images`` + ``root/masks`` whose files pair up by stem (``a.tif`` with
``a.gif``). Preprocessing follows METHOD.md ("Data and prompts"): image -> 3 channels -> resized into
the model's S x S input (bicubic, anti-aliased) -> min-max to [0, 1]; mask binarised and
nearest-neighbour resized the same way, at the input size and at the decoder's low-res size; box from
the ORIGINAL mask's bounding box, scaled into the input frame (:func:`scaled_box`). Two ways to fit an image into the square (``RESIZE_MODES``):

- ``square``: stretched to S x S, aspect not kept (MedSAM's preprocessing, used for the SAM ViT models);
- ``longest-side``: the longest side becomes S, aspect kept, the rest zero-padded at the bottom and
  right (SAM's ``ResizeLongestSide`` and LiteMedSAM's recipe). Min-max normalisation comes before the
  padding. Predictions are cropped to the part the image fills before going back to its original size
  (:func:`fitted_size` tells which part).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medcore_tp.atomic import save_json
from medcore_tp.errors import MedcoreError

__all__ = [
    "BOX_MODES",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "SPLIT_NAMES",
    "Sample",
    "SegmentationDataset",
    "binarize_mask",
    "box_from_mask",
    "calibration_subset",
    "collate",
    "discover",
    "file_rng",
    "fit_mask",
    "fitted_size",
    "load_datasets",
    "load_pair",
    "prepare_pair",
    "make_splits",
    "mask_to_size",
    "preprocess_image",
    "read_image",
    "read_mask",
    "read_mask_values",
    "resize_image",
    "scaled_box",
    "resolve_splits",
    "select_split",
    "settle_splits",
    "split_stems",
    "widen_box",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
SPLIT_NAMES = ("train", "val", "test")
RESIZE_MODES = ("square", "longest-side")
BOX_MODES = ("tight", "random", "deterministic")
SPLITS_FORMAT = "medcore-tp splits"


@dataclass(frozen=True)
class Sample:
    """One image/mask pair of a named dataset; ``name`` is the shared file stem."""

    dataset: str
    name: str
    image_path: Path
    mask_path: Path
    mask_threshold: float | None = None  # None: > 127 (> 0.5 for masks already in [0, 1])


# --------------------------------------------------------------------------------------------
# Discovery


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; two files with one stem would make pairing ambiguous."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in by_stem:
            raise MedcoreError(f"{by_stem[path.stem]} and {path} share the stem '{path.stem}'; keep one of them")
        by_stem[path.stem] = path
    return by_stem


def _folder_name(root: Path) -> str:
    # abspath + normpath handle "." and "..", without following a symlinked folder to its target.
    return os.path.basename(os.path.normpath(os.path.abspath(root))) or "data"


def discover(root: str | os.PathLike, name: str | None = None, mask_threshold: float | None = None) -> list[Sample]:
    """Pair ``root/images`` with ``root/masks`` by file stem, sorted by stem.

    ``name`` defaults to the folder's name; ``mask_threshold`` is how masks are binarised (see
    :func:`binarize_mask`). Files present on one side only are left out with a warning; a missing
    folder, a file instead of a folder, an empty folder or no stem in common is an error.
    """
    root = Path(root)
    name = name or _folder_name(root)
    if root.exists() and not root.is_dir():
        raise MedcoreError(f"data folder {root} is a file, not a folder (expected {root}/images and {root}/masks)")
    if not root.is_dir():
        raise MedcoreError(f"data folder {root} does not exist")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise MedcoreError(f"{root} has no '{sub}/' folder (expected {root}/images and {root}/masks)")
    folders = {}
    for sub in ("images", "masks"):
        folders[sub] = _image_files(root / sub)
        if not folders[sub]:
            raise MedcoreError(f"{root / sub} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    images, masks = folders["images"], folders["masks"]
    common = sorted(images.keys() & masks.keys())
    if not common:
        raise MedcoreError(
            f"no file stem in common between {root / 'images'} (e.g. '{next(iter(images))}') and "
            f"{root / 'masks'} (e.g. '{next(iter(masks))}'); images and masks pair by stem"
        )
    unpaired = len(images) + len(masks) - 2 * len(common)
    if unpaired:
        warnings.warn(f"{root}: {unpaired} file(s) without a partner left out", stacklevel=2)
    return [Sample(name, stem, images[stem], masks[stem], mask_threshold) for stem in common]


def load_datasets(roots: Iterable[str | os.PathLike], mask_threshold: float | None = None) -> dict[str, list[Sample]]:
    """Discover several dataset folders, keyed by folder name (which must then be unique)."""
    datasets: dict[str, list[Sample]] = {}
    origin: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        name = _folder_name(root)
        if name in datasets:
            raise MedcoreError(f"two data folders are named '{name}': {origin[name]} and {root}")
        datasets[name] = discover(root, name, mask_threshold)
        origin[name] = root
    if not datasets:
        raise MedcoreError("no data folder given")
    return datasets


# --------------------------------------------------------------------------------------------
# Reading


def _open(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not later
    except FileNotFoundError:
        raise MedcoreError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MedcoreError(f"cannot read {what} {path}: {exc}") from None
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an (H, W, 3) float32 array on a 0-255 scale.

    Grayscale is repeated over 3 channels; RGBA/LA drop alpha; palette images use their colours;
    16-bit and 32-bit integer images are scaled by 255/65535 and float images are kept as they are
    (the min-max normalisation of :func:`preprocess_image` makes the scale irrelevant anyway).
    Multi-frame files (GIF, TIFF) use their first frame.
    """
    path = Path(path)
    image = _open(path, "image")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
    elif image.mode == "L":
        array = np.asarray(image, dtype=np.float32)
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if not np.isfinite(array).all():
        raise MedcoreError(f"image {path} holds NaN or infinite values")
    return array


def binarize_mask(mask: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Binarise a mask array: > 127, or > 0.5 when its values are already within [0, 1].

    ``threshold`` (``--mask-threshold``, on the 0-255 scale) replaces 127; masks whose values lie
    within [0, 1] are compared with ``threshold / 255``. Colour masks (H, W, 3 or 4) are first
    reduced to luma like PIL's ``convert('L')`` (0.299 R + 0.587 G + 0.114 B; alpha ignored), so
    white-on-black RGB masks work.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        rgb = mask[..., :3].astype(np.float32)
        mask = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (or 2-D with channels), got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.copy()
    if mask.size and float(mask.max()) <= 1.0:
        return mask > (0.5 if threshold is None else threshold / 255.0)
    return mask > (127 if threshold is None else threshold)


def read_mask_values(path: str | os.PathLike) -> np.ndarray:
    """A mask file's values before binarisation: (H, W), bool for 1-bit files, luma for colour ones."""
    path = Path(path)
    image = _open(path, "mask")
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F", "L"):
        return np.asarray(image)
    # Palette, RGB(A), LA, CMYK...: the documented rule for these data is convert('L') > 127.
    return np.asarray(image.convert("L"))


def read_mask(path: str | os.PathLike, threshold: float | None = None) -> np.ndarray:
    """Read a mask file as an (H, W) bool array (see :func:`binarize_mask`)."""
    return binarize_mask(read_mask_values(path), threshold)


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Read a sample's image (H, W, 3 float32) and mask (H, W bool); their sizes must agree."""
    image = read_image(sample.image_path)
    mask = read_mask(sample.mask_path, sample.mask_threshold)
    if image.shape[:2] != mask.shape:
        raise MedcoreError(
            f"image {sample.image_path} is {image.shape[1]}x{image.shape[0]} but mask "
            f"{sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height)"
        )
    return image, mask


# --------------------------------------------------------------------------------------------
# Preprocessing


def fitted_size(height: int, width: int, size: int, mode: str = "square") -> tuple[int, int]:
    """(h, w) of the part of the S x S input that an (H, W) image fills, top-left aligned.

    ``square``: (S, S). ``longest-side``: the longest side becomes S and the other
    ``int(side * S / longest + 0.5)`` (SAM's ``ResizeLongestSide`` rounding), at least 1.
    """
    if mode == "square":
        return size, size
    if mode != "longest-side":
        raise MedcoreError(f"--resize-mode {mode}: must be one of {', '.join(RESIZE_MODES)}")
    scale = size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, size: int | tuple[int, int], method: str = "torch") -> np.ndarray:
    """Resize an (H, W, 3) image to ``size`` (S for S x S, or (h, w)), bicubic and anti-aliased.

    ``method="torch"`` uses ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``
    (Keys cubic kernel widened when shrinking, like PIL); ``"skimage"`` uses
    ``skimage.transform.resize(order=3, anti_aliasing=True, preserve_range=True)`` as the MedSAM
    authors' preprocessing does, about 100-200x slower. Both results are clipped to the input's
    range, as skimage does by default.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if method == "skimage":
        from skimage.transform import resize

        out = resize(image, (h, w, image.shape[2]), order=3, mode="constant",
                     preserve_range=True, anti_aliasing=True)
        return out.astype(np.float32)
    if method != "torch":
        raise ValueError(f"unknown resize method {method!r} (torch or skimage)")
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if tensor.shape[-2:] != (h, w):
        tensor = torch.nn.functional.interpolate(tensor, size=(h, w), mode="bicubic",
                                                 antialias=True, align_corners=False)
        tensor = tensor.clamp(float(image.min()), float(image.max()))
    return tensor[0].permute(1, 2, 0).numpy()


def preprocess_image(image: np.ndarray, size: int, method: str = "torch", mode: str = "square") -> np.ndarray:
    """Fit an (H, W, 3) image into the S x S input (``mode``, see the module docstring), min-max to
    [0, 1], zero-pad; returns (3, S, S) float32.

    A constant image becomes all zeros (the range is floored at 1e-8 as in MedSAM).
    """
    h, w = fitted_size(image.shape[0], image.shape[1], size, mode)
    resized = resize_image(image, (h, w), method)
    low, high = float(resized.min()), float(resized.max())
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :h, :w] = ((resized - low) / max(high - low, 1e-8)).transpose(2, 0, 1)
    return out


@dataclass
class PreparedPair:
    """An (image, mask) pair in a model's input frame: image (3, S, S) in [0, 1], mask (S, S), mask at
    the logit side, and the (h, w) part of the frame the image fills."""

    image: np.ndarray
    mask: np.ndarray
    mask_low: np.ndarray
    fitted: tuple[int, int]
    box: np.ndarray | None = None  # tight box of the original mask in the input frame (scaled_box)


def prepare_pair(image: np.ndarray, mask: np.ndarray, size: int, low_size: int, mode: str = "square",
                 method: str = "torch") -> PreparedPair:
    """Fit an (H, W, 3) image and its (H, W) mask into the S x S input (``mode``) and the mask also
    into the ``low_size`` logit frame; the box comes from the original mask (:func:`scaled_box`)."""
    fitted = fitted_size(mask.shape[0], mask.shape[1], size, mode)
    return PreparedPair(
        image=preprocess_image(image, size, method, mode),
        mask=fit_mask(mask, size, mode),
        mask_low=fit_mask(mask, low_size, mode),
        fitted=fitted,
        box=scaled_box(mask, fitted),
    )


def fit_mask(mask: np.ndarray, size: int, mode: str = "square") -> np.ndarray:
    """A 2-D bool mask fitted into S x S like its image (nearest neighbour, False padding)."""
    h, w = fitted_size(mask.shape[0], mask.shape[1], size, mode)
    out = np.zeros((size, size), dtype=bool)
    out[:h, :w] = mask_to_size(mask, h, w)
    return out


def mask_to_size(mask: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D bool mask, sampling each output pixel at its centre."""
    width = height if width is None else width
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.intp), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.intp), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------------------
# Boxes


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight box ``[x0, y0, x1, y1]`` (inclusive pixel indices) of a 2-D mask, as float32.

    An empty mask gets the full-image box ``[0, 0, W-1, H-1]``.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.array([0, 0, mask.shape[1] - 1, mask.shape[0] - 1], dtype=np.float32)
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def scaled_box(mask: np.ndarray, fitted: tuple[int, int]) -> np.ndarray:
    """Tight box of an ORIGINAL-resolution (H, W) mask, scaled into the (h, w) part of the input frame
    the image fills: ``[x0, y0, x1, y1]`` inclusive, float32.

    Taken before any resizing, so that thin extremities that nearest-neighbour downsampling of the mask
    would drop still count (LiteMedSAM's own inference scales the original box the same way). The box
    covers every input pixel that an original foreground pixel overlaps: x0 -> floor(x0 * w / W),
    x1 -> ceil((x1 + 1) * w / W) - 1. An empty mask gets the box of the whole fitted part.

    Detached specks smaller than one input pixel (fewer than (W / w) * (H / h) original pixels, e.g. a
    lone JPEG-artefact pixel in a mask's corner) are not part of the object the box frames: on the
    Kvasir-SEG masks in shared/data one such pixel at (0, 0) would otherwise turn a tight box into
    the whole image. Parts attached to the object, however thin, always count.
    """
    height, width = mask.shape
    h, w = fitted
    mask = _without_specks(mask, (width / w) * (height / h))
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.array([0, 0, w - 1, h - 1], dtype=np.float32)
    cols = np.flatnonzero(mask.any(axis=0))
    sx, sy = w / width, h / height
    x0, y0 = int(np.floor(cols[0] * sx + 1e-9)), int(np.floor(rows[0] * sy + 1e-9))
    x1, y1 = int(np.ceil((cols[-1] + 1) * sx - 1e-9)) - 1, int(np.ceil((rows[-1] + 1) * sy - 1e-9)) - 1
    return np.array([x0, y0, min(max(x1, x0), w - 1), min(max(y1, y0), h - 1)], dtype=np.float32)


def _without_specks(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """``mask`` without the 8-connected components smaller than ``min_pixels`` (all kept when every
    component is that small)."""
    if min_pixels <= 1 or not mask.any():
        return mask
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = sizes >= min_pixels
    if not keep.any():
        return mask
    return keep[labels - 1] & (labels > 0)


def widen_box(box: np.ndarray, jitter: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Move each side of ``box`` outwards by its own random whole number of pixels in [0, jitter],
    then clip to the image (``[0, W-1]`` x ``[0, H-1]``)."""
    if jitter < 0:
        raise ValueError(f"box jitter must be >= 0, got {jitter}")
    widen = rng.integers(0, jitter + 1, size=4).astype(np.float32)
    out = box.astype(np.float32) + widen * np.array([-1, -1, 1, 1], dtype=np.float32)
    return np.clip(out, 0, np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float32))


def file_rng(seed: int, name: str) -> np.random.Generator:
    """A generator fixed by (seed, file name): the same box for a file in every run and process.

    Python's ``hash()`` is salted per process, so a cryptographic hash makes the seed instead.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------------------------
# Splits


def split_stems(stems: Sequence[str], seed: int = 42,
                fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, list[str]]:
    """Shuffle sorted ``stems`` with ``seed`` and cut them into train/val/test.

    val and test get round(fraction * n) (halves rounded up) and train the rest, so with 5 images
    the split is 3/1/1 and with 100 it is 60/20/20.
    """
    ordered = sorted(stems)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]
    n = len(shuffled)
    n_val = int(np.floor(fractions[1] * n + 0.5))
    n_test = int(np.floor(fractions[2] * n + 0.5))
    n_train = n - n_val - n_test
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train:n_train + n_val],
        "test": shuffled[n_train + n_val:],
    }


def make_splits(datasets: Mapping[str, Sequence[Sample]], seed: int = 42) -> dict[str, Any]:
    """A splits document (what ``splits.json`` holds) for every dataset, each split on its own."""
    return {
        "format": SPLITS_FORMAT,
        "seed": seed,
        "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
        "datasets": {name: split_stems([s.name for s in samples], seed) for name, samples in datasets.items()},
    }


def _read_splits(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedcoreError(f"cannot read splits file {path}: {exc}") from None
    ok = isinstance(doc, dict) and isinstance(doc.get("datasets"), dict) and all(
        isinstance(parts, dict) and all(isinstance(parts.get(k), list) for k in SPLIT_NAMES)
        for parts in doc["datasets"].values()
    )
    if not ok:
        raise MedcoreError(f"splits file {path} is not a medcore-tp splits file "
                           f"(expected {{'datasets': {{name: {{'train': [...], 'val': [...], 'test': [...]}}}}}})")
    return doc


@dataclass
class SplitsChoice:
    """The splits a run uses and where they came from.

    ``action``: ``created`` (no file: new splits), ``reused`` (the file covers every dataset) or
    ``extended`` (the file lacked ``added`` datasets, which got new splits with the file's seed);
    ``written``: where the document was written (None when nothing needed writing or no place was given).
    """

    doc: dict[str, Any]
    source: Path | None
    action: str
    added: list[str]
    written: Path | None

    def describe(self) -> str:
        """One line for the screen."""
        if self.action == "reused":
            return f"splits: reused {self.source}"
        where = f", written to {self.written}" if self.written else " (not written)"
        if self.action == "created":
            return f"splits: new (seed {self.doc.get('seed')}){where}"
        kept = f"; {self.source} is unchanged" if self.written != self.source else ""
        return (f"splits: {self.source} extended with new splits of {', '.join(self.added)} "
                f"(seed {self.doc.get('seed')}){where}{kept}")

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "source": str(self.source) if self.source else None,
                "added": self.added, "written": str(self.written) if self.written else None}


def settle_splits(datasets: Mapping[str, Sequence[Sample]], path: str | os.PathLike | None,
                  seed: int = 42, write_to: str | os.PathLike | None = None) -> SplitsChoice:
    """Reuse the splits in ``path`` if it exists, else create them; write what changed to ``write_to``.

    A dataset missing from the file gets a fresh split (with the file's seed); the file itself is only
    rewritten when ``write_to`` is that file. Every stem the file lists must exist in its dataset;
    files of a dataset that the file does not list are left out with a warning.
    """
    source = Path(path) if path is not None else None
    if source is not None and source.exists():
        doc = _read_splits(source)
        action = "reused"
    else:
        doc = {"format": SPLITS_FORMAT, "seed": seed,
               "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "datasets": {}}
        action = "created"
    file_seed = int(doc.get("seed", seed))
    added = []
    for name, samples in datasets.items():
        stems = {s.name for s in samples}
        parts = doc["datasets"].get(name)
        if parts is None:
            doc["datasets"][name] = split_stems(sorted(stems), file_seed)
            added.append(name)
            continue
        listed = [stem for key in SPLIT_NAMES for stem in parts[key]]
        if len(set(listed)) != len(listed):
            twice = next(stem for stem in listed if listed.count(stem) > 1)
            raise MedcoreError(f"splits file {source} lists '{twice}' of dataset '{name}' more than once "
                               f"(the splits must not overlap)")
        missing = [stem for stem in listed if stem not in stems]
        if missing:
            raise MedcoreError(f"splits file {source} lists '{missing[0]}' for dataset '{name}' "
                               f"({len(missing)} missing in all), which is not in its data folder")
        extra = len(stems - set(listed))
        if extra:
            warnings.warn(f"{extra} file(s) of dataset '{name}' are not in {source} and are left out", stacklevel=2)
    if action == "reused" and added:
        action = "extended"
    written = None
    if action != "reused" and write_to is not None:
        written = Path(write_to)
        save_json(doc, written)
    return SplitsChoice(doc, source if action != "created" else None, action, added, written)


def resolve_splits(datasets: Mapping[str, Sequence[Sample]], path: str | os.PathLike,
                   seed: int = 42) -> dict[str, Any]:
    """:func:`settle_splits` writing back into ``path`` itself (created if missing, extended in place)."""
    return settle_splits(datasets, path, seed, write_to=path).doc


def select_split(datasets: Mapping[str, Sequence[Sample]], splits: Mapping[str, Any] | None,
                 split: str) -> dict[str, list[Sample]]:
    """The samples of one split (``train``/``val``/``test``, in split order) or ``all`` of them."""
    if split == "all":
        return {name: list(samples) for name, samples in datasets.items()}
    if split not in SPLIT_NAMES:
        raise MedcoreError(f"--split must be one of train, val, test, all; got '{split}'")
    if splits is None:
        raise ValueError("a split other than 'all' needs splits")
    chosen = {}
    for name, samples in datasets.items():
        by_stem = {s.name: s for s in samples}
        chosen[name] = [by_stem[stem] for stem in splits["datasets"][name][split]]
    return chosen


def calibration_subset(train: Sequence[Sample], k: int = 128) -> list[Sample]:
    """The calibration set: the first ``k`` training samples (in split order)."""
    if k < 1:
        raise ValueError(f"calibration size must be >= 1, got {k}")
    return list(train[:k])


# --------------------------------------------------------------------------------------------
# torch Dataset


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples preprocessed for a SAM-style model with input size ``input_size``.

    Each item is a dict: ``index``; ``image`` (3, S, S) float32 in [0, 1]; ``box`` (4,) float32
    ``[x0, y0, x1, y1]`` in the input frame; ``mask`` (S, S) bool; ``mask_low`` at the model's logit
    size (``low_size``, default S/4 as for SAM's ViT; LiteMedSAM's logits are S x S) bool;
    ``mask_original`` (H, W) bool numpy array; ``original_size`` (H, W); ``fitted_size`` (h, w), the
    part of the input the image fills (``resize_mode``: ``square`` or ``longest-side``).
    ``box_mode``: ``tight`` (no widening), ``random`` (each side widened by 0..box_jitter px, new
    draw every time; reproducible under ``torch.manual_seed``), ``deterministic`` (the same draw
    for a file every time, from ``seed`` and the file name). With ``skip_bad`` an unreadable or
    inconsistent pair gives ``{"index": i, "error": message}`` instead of raising.
    """

    def __init__(self, samples: Sequence[Sample], input_size: int, box_mode: str = "deterministic",
                 box_jitter: int = 5, seed: int = 42, skip_bad: bool = False, resize: str = "torch",
                 low_size: int | None = None, resize_mode: str = "square") -> None:
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        if box_jitter < 0:
            raise MedcoreError(f"--box-jitter must be >= 0, got {box_jitter}")
        self.samples = list(samples)
        self.input_size = int(input_size)
        self.low_size = int(low_size) if low_size else self.input_size // 4
        self.box_mode = box_mode
        self.box_jitter = int(box_jitter)
        self.seed = seed
        self.skip_bad = skip_bad
        self.resize = resize
        fitted_size(1, 1, 1, resize_mode)  # a bad mode fails here, not in a worker
        self.resize_mode = resize_mode

    def __len__(self) -> int:
        return len(self.samples)

    def _box(self, sample: Sample, box: np.ndarray, fitted: tuple[int, int]) -> np.ndarray:
        if self.box_mode == "tight" or self.box_jitter == 0:
            return box
        if self.box_mode == "deterministic":
            rng = file_rng(self.seed, sample.name)
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return widen_box(box, self.box_jitter, rng, *fitted)  # never into the padding

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            image, mask = load_pair(sample)
        except MedcoreError as exc:
            if not self.skip_bad:
                raise
            return {"index": index, "error": str(exc)}
        pair = prepare_pair(image, mask, self.input_size, self.low_size, self.resize_mode, self.resize)
        return {
            "index": index,
            "image": torch.from_numpy(pair.image),
            "box": torch.from_numpy(self._box(sample, pair.box, pair.fitted)),
            "mask": torch.from_numpy(pair.mask),
            "mask_low": torch.from_numpy(pair.mask_low),
            "mask_original": mask,
            "original_size": mask.shape,
            "fitted_size": pair.fitted,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for :class:`SegmentationDataset`: stacks the fixed-size tensors,
    keeps original-size masks as lists and sets failed items apart under ``errors``."""
    good = [item for item in items if "error" not in item]
    batch: dict[str, Any] = {"errors": [(item["index"], item["error"]) for item in items if "error" in item]}
    batch["index"] = [item["index"] for item in good]
    if good:
        for key in ("image", "box", "mask", "mask_low"):
            batch[key] = torch.stack([item[key] for item in good])
        batch["mask_original"] = [item["mask_original"] for item in good]
        batch["original_size"] = [tuple(item["original_size"]) for item in good]
        batch["fitted_size"] = [tuple(item["fitted_size"]) for item in good]
    return batch
