"""What a pruning run shows a person: speed and boundary quality of the model, before and after.

``snapshot`` measures one model: encoder latency on its device and Dice / Boundary F1 / HD95 / NSD on
an evaluation set (real folders, or the built-in synthetic set written to a temporary folder).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from medcore_tp.evaluate import evaluate
from medcore_tp.profile import measure_latency
from medcore_tp.synthetic import write_synthetic_dataset

SYNTHETIC_EVAL_IMAGES = 8
SYNTHETIC_EVAL_SEED = 1000  # different images from the synthetic calibration set (seed 0)


@dataclass
class Snapshot:
    """Latency (s, median) and macro-mean metrics of a model on an evaluation set."""

    latency_s: float
    dice: float
    iou: float
    boundary_f1: float
    hd95: float
    nsd: float
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_eval_folder(root: str) -> str:
    """Write the built-in synthetic evaluation set under ``root``; returns its folder."""
    return str(write_synthetic_dataset(os.path.join(root, "synthetic"), n=SYNTHETIC_EVAL_IMAGES, size=256,
                                       seed=SYNTHETIC_EVAL_SEED))


def snapshot(model: nn.Module, data_dirs: Sequence[str] | None, split: str = "test", repeats: int = 3,
             progress: bool = False, mask_threshold: float | None = None) -> Snapshot:
    """Measure ``model``: encoder latency and metrics on ``data_dirs`` (None: built-in synthetic set, tight boxes)."""
    latency = measure_latency(model, device=next(model.parameters()).device, repeats=repeats)["median_s"]
    with tempfile.TemporaryDirectory() as tmp:
        if data_dirs:
            result = evaluate(model, data_dirs, split=split, progress=progress, mask_threshold=mask_threshold)
        else:
            result = evaluate(model, [synthetic_eval_folder(tmp)], split="all", box_jitter=0, progress=progress)
    macro = result.summary["macro"]
    return Snapshot(latency_s=latency, dice=macro["dice"], iou=macro["iou"], boundary_f1=macro["boundary_f1"],
                    hd95=macro["hd95"], nsd=macro["nsd"], images=len(result.rows))
