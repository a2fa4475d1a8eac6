"""Segmentation datasets: image/mask folders, reading files, and the torch ``Dataset`` for a model.

A dataset is a folder ``root/images`` + ``root/masks`` whose files pair up by stem (``a.tif`` with
``a.gif``). :class:`SegmentationDataset` preprocesses samples for a model's :class:`InputSpec`
(:mod:`medcore_tp.preprocessing`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medcore_tp.errors import MedcoreError
from medcore_tp.preprocessing import InputSpec, file_rng, prepare_pair, widen_box

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
BOX_MODES = ("tight", "random", "deterministic")


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
# torch Dataset


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples preprocessed for a SAM-style model whose input frame is ``spec``.

    ``spec`` is the model's :class:`~medcore_tp.preprocessing.InputSpec` (``input_spec(model)``):
    input side S, logit side, resize mode. Each item is a dict: ``index``; ``image`` (3, S, S)
    float32 in [0, 1]; ``box`` (4,) float32 ``[x0, y0, x1, y1]`` in the input frame; ``mask`` (S, S)
    bool; ``mask_low`` at the logit side, bool; ``mask_original`` (H, W) bool numpy array;
    ``original_size`` (H, W); ``fitted_size`` (h, w), the part of the input the image fills.
    ``box_mode``: ``tight`` (no widening), ``random`` (each side widened by 0..box_jitter px, new
    draw every time; reproducible under ``torch.manual_seed``), ``deterministic`` (the same draw
    for a file every time, from ``seed`` and the file name). With ``skip_bad`` an unreadable or
    inconsistent pair gives ``{"index": i, "error": message}`` instead of raising.
    """

    def __init__(self, samples: Sequence[Sample], spec: InputSpec, box_mode: str = "deterministic",
                 box_jitter: int = 5, seed: int = 42, skip_bad: bool = False, resize: str = "torch") -> None:
        if not isinstance(spec, InputSpec):
            raise TypeError(f"spec must be an InputSpec (medcore_tp.models.input_spec(model)), got {spec!r}")
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        if box_jitter < 0:
            raise MedcoreError(f"box_jitter {box_jitter}: must be >= 0", "box_jitter")
        self.samples = list(samples)
        self.spec = spec
        self.box_mode = box_mode
        self.box_jitter = int(box_jitter)
        self.seed = seed
        self.skip_bad = skip_bad
        self.resize = resize

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
        pair = prepare_pair(image, mask, self.spec, self.resize)
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
