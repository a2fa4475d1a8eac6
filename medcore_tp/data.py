"""Datasets, preprocessing and splits under one name (kept for existing imports).

The code lives in :mod:`medcore_tp.datasets` (folders, reading, the torch ``Dataset``),
:mod:`medcore_tp.preprocessing` (the input spec, fitting images and masks, boxes) and
:mod:`medcore_tp.splits` (train / val / test splits and the calibration subset).
"""

from medcore_tp.datasets import (
    BOX_MODES,
    IMAGE_EXTENSIONS,
    Sample,
    SegmentationDataset,
    binarize_mask,
    collate,
    discover,
    load_datasets,
    load_pair,
    read_image,
    read_mask,
    read_mask_values,
)
from medcore_tp.preprocessing import (
    RESIZE_MODES,
    InputSpec,
    PreparedPair,
    box_from_mask,
    file_rng,
    fit_mask,
    fitted_size,
    mask_to_size,
    prepare_pair,
    preprocess_image,
    resize_image,
    scaled_box,
    widen_box,
)
from medcore_tp.splits import (
    SPLIT_NAMES,
    SPLITS_FORMAT,
    SplitsChoice,
    calibration_subset,
    make_splits,
    resolve_splits,
    select_split,
    settle_splits,
    split_stems,
)

__all__ = [
    "BOX_MODES", "IMAGE_EXTENSIONS", "RESIZE_MODES", "SPLITS_FORMAT", "SPLIT_NAMES", "InputSpec", "PreparedPair",
    "Sample", "SegmentationDataset", "binarize_mask", "box_from_mask", "calibration_subset", "collate", "discover",
    "file_rng", "fit_mask", "fitted_size", "load_datasets", "load_pair", "make_splits", "mask_to_size",
    "prepare_pair", "preprocess_image", "read_image", "read_mask", "resize_image", "resolve_splits",
    "select_split", "split_stems", "widen_box", "SplitsChoice", "read_mask_values", "scaled_box", "settle_splits",
]
