"""How far medcore-tp's HD95 and NSD conventions sit from MONAI's defaults, on realistic masks.

Pairs: each ground-truth mask of a dataset at the model input size (1024, nearest) against a
perturbed copy (random shift of up to 8 px and a random 0-3 px dilation or erosion), which looks
like a reasonable prediction. Prints mean and max differences and writes
``benchmarks/results/metrics_vs_monai.json``. Needs MONAI (the ``test`` extra).

    python benchmarks/compare_metrics_monai.py --data ../shared/data/kvasir-seg-256 --images 40
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from medcore_tp.atomic import save_json
from medcore_tp.data import discover, mask_to_size, read_mask
from medcore_tp.metrics import hd95, nsd
from medcore_tp.paths import data_root

DATA = data_root()  # $MEDCORE_DATA, else ../shared/data


def _perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.roll(mask, tuple(rng.integers(-8, 9, size=2)), axis=(0, 1))
    radius = int(rng.integers(0, 4))
    if radius:
        grow = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
        out = grow(out, structure=np.ones((2 * radius + 1,) * 2, dtype=bool))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "kvasir-seg-256")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "metrics_vs_monai.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = []
    for sample in discover(args.data)[: args.images]:
        gt = mask_to_size(read_mask(sample.mask_path), args.size)
        pred = _perturb(gt, rng)
        if not gt.any() or not pred.any():
            continue
        t_pred, t_gt = (torch.from_numpy(m)[None, None].float() for m in (pred, gt))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monai_hd = float(compute_hausdorff_distance(t_pred, t_gt, include_background=True, percentile=95))
            monai_nsd_px = float(compute_surface_dice(t_pred, t_gt, [2.0], include_background=True))
            monai_nsd_sub = float(compute_surface_dice(t_pred, t_gt, [2.0], include_background=True,
                                                       use_subvoxels=True, spacing=[(1.0, 1.0)]))
        rows.append({
            "name": sample.name,
            "hd95": hd95(pred, gt), "hd95_cross": hd95(pred, gt, connectivity=1), "monai_hd95": monai_hd,
            "nsd": nsd(pred, gt, 2.0), "monai_nsd_subvoxel": monai_nsd_sub, "monai_nsd_default": monai_nsd_px,
        })

    def stats(a: str, b: str) -> dict[str, float]:
        d = np.array([r[a] - r[b] for r in rows])
        return {"mean_diff": float(d.mean()), "mean_abs_diff": float(np.abs(d).mean()), "max_abs_diff": float(np.abs(d).max()),
                "mean_ours": float(np.mean([r[a] for r in rows])), "mean_monai": float(np.mean([r[b] for r in rows]))}

    report = {
        "data": args.data.name, "pairs": len(rows), "size": args.size, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hd95_square_vs_monai": stats("hd95", "monai_hd95"),
        "hd95_cross_vs_monai": stats("hd95_cross", "monai_hd95"),
        "nsd_vs_monai_subvoxel": stats("nsd", "monai_nsd_subvoxel"),
        "nsd_vs_monai_default": stats("nsd", "monai_nsd_default"),
        "rows": rows,
    }
    save_json(report, args.out)
    print(f"{len(rows)} pairs from {args.data.name} at {args.size}x{args.size}")
    for key in ("hd95_square_vs_monai", "hd95_cross_vs_monai", "nsd_vs_monai_subvoxel", "nsd_vs_monai_default"):
        s = report[key]
        print(f"{key:24} ours {s['mean_ours']:8.4f}  monai {s['mean_monai']:8.4f}  mean diff {s['mean_diff']:+.4f}  "
              f"max |diff| {s['max_abs_diff']:.4f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
