"""Datasets: file formats, pairing, preprocessing, boxes, splits, the torch Dataset, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcore_tp import data as D
from medcore_tp.errors import MedcoreError
from medcore_tp.paths import data_root
from medcore_tp.synthetic import synthetic_pairs, write_synthetic_dataset

SHARED_DATA = data_root()  # $MEDCORE_DATA, else ../shared/data
REAL_FOLDERS = ["kvasir-seg", "kvasir-seg-256", "cvc-clinicdb-256", "drive", "monuseg", "ct-organs-samed2d"]


def make_dataset(root: Path, stems, size=(24, 32), image_ext=".png", mask_ext=".png") -> Path:
    """A small dataset: grey gradient images and a rectangle mask per stem."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    h, w = size
    for i, stem in enumerate(stems):
        image = (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)
        Image.fromarray(np.dstack([image] * 3)).save(root / "images" / f"{stem}{image_ext}")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[2 + i % 5 : 12, 3:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_ext}")
    return root


# ------------------------------------------------------------------------------------------
# Reading images and masks


@pytest.mark.parametrize(
    ("mode", "ext"),
    [("L", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("P", ".gif"), ("RGB", ".bmp"), ("RGB", ".tif"),
     ("L", ".tiff"), ("RGB", ".jpeg")],
)
def test_read_image_modes(tmp_path, mode, ext):
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[:, 6:] = 200
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"x{ext}"
    image.save(path)
    array = D.read_image(path)
    assert array.shape == (10, 12, 3) and array.dtype == np.float32
    assert array[:, :5].max() < 20 and array[:, 7:].min() > 150  # content kept, 0-255 scale


def test_read_image_16bit(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "x.png")
    array = D.read_image(tmp_path / "x.png")
    assert array.shape == (4, 3, 3)
    np.testing.assert_allclose(array[0, :, 0], values[0] * 255.0 / 65535.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("maker", "ext"),
    [
        (lambda m: Image.fromarray(m * 255), ".png"),  # 0/255 grayscale
        (lambda m: Image.fromarray(m), ".png"),  # already 0/1
        (lambda m: Image.fromarray(np.dstack([m * 255] * 3)), ".png"),  # RGB
        (lambda m: Image.fromarray(np.dstack([m * 255] * 3 + [np.full_like(m, 255)])), ".png"),  # RGBA
        (lambda m: Image.fromarray(m * 255).convert("P"), ".gif"),  # palette GIF, as DRIVE's
        (lambda m: Image.fromarray(m.astype(np.uint16) * 65535), ".png"),  # 16-bit
        (lambda m: Image.fromarray(m.astype(bool)), ".png"),  # 1-bit
        (lambda m: Image.fromarray(m * 255), ".bmp"),
    ],
)
def test_read_mask_formats(tmp_path, maker, ext):
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[3:9, 4:15] = 1
    path = tmp_path / f"m{ext}"
    maker(mask).save(path)
    np.testing.assert_array_equal(D.read_mask(path), mask.astype(bool))


def test_read_mask_jpeg_noise(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 10:40] = 255
    Image.fromarray(np.dstack([mask] * 3)).save(tmp_path / "m.jpg", quality=60)
    got = D.read_mask(tmp_path / "m.jpg")
    assert np.mean(got != mask.astype(bool)) < 0.01  # only a few edge pixels may flip


def test_binarize_rules():
    assert D.binarize_mask(np.array([[0, 127, 128, 255]])).tolist() == [[False, False, True, True]]
    assert D.binarize_mask(np.array([[0.0, 0.5, 0.51, 1.0]])).tolist() == [[False, False, True, True]]
    assert D.binarize_mask(np.array([[0, 1]], dtype=np.uint8)).tolist() == [[False, True]]
    white, red = [255, 255, 255], [255, 0, 0]
    assert D.binarize_mask(np.array([[white, red]], dtype=np.uint8)).tolist() == [[True, False]]  # luma, like convert("L")


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(MedcoreError, match="broken.png"):
        D.read_image(path)
    with pytest.raises(MedcoreError, match="broken.png"):
        D.read_mask(path)


def test_truncated_image_names_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 90).save(tmp_path / "t.png")
    raw = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MedcoreError, match="t.png"):
        D.read_image(tmp_path / "t.png")


def test_size_mismatch_names_both_files(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a"])
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "masks" / "a.png")
    (sample,) = D.discover(root)
    with pytest.raises(MedcoreError, match=r"images/a\.png is 32x24 but mask .*masks/a\.png is 10x10"):
        D.load_pair(sample)


# ------------------------------------------------------------------------------------------
# Discovery


def test_pairs_by_stem_across_extensions(tmp_path):
    root = make_dataset(tmp_path / "ds", ["01_test", "02_test"], image_ext=".tif", mask_ext=".gif")
    samples = D.discover(root)
    assert [s.name for s in samples] == ["01_test", "02_test"]
    assert samples[0].dataset == "ds"
    assert samples[0].image_path.suffix == ".tif" and samples[0].mask_path.suffix == ".gif"


def test_unpaired_files_are_left_out_with_a_warning(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a", "b"])
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / "images" / "c.png")
    (root / "images" / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="1 file"):
        samples = D.discover(root)
    assert [s.name for s in samples] == ["a", "b"]


def test_empty_folder(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a"])
    (root / "masks" / "a.png").unlink()
    with pytest.raises(MedcoreError, match=r"masks holds no image files"):
        D.discover(root)


def test_missing_folder(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    with pytest.raises(MedcoreError, match=r"has no 'masks/' folder"):
        D.discover(tmp_path / "ds")
    with pytest.raises(MedcoreError, match="does not exist"):
        D.discover(tmp_path / "nowhere")


def test_no_stem_in_common(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a"])
    (root / "masks" / "a.png").rename(root / "masks" / "a_mask.png")
    with pytest.raises(MedcoreError, match=r"no file stem in common .*'a'.*'a_mask'"):
        D.discover(root)


def test_duplicate_stem(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a"])
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / "images" / "a.jpg")
    with pytest.raises(MedcoreError, match="share the stem 'a'"):
        D.discover(root)


def test_several_datasets_and_name_clash(tmp_path):
    make_dataset(tmp_path / "one", ["a"])
    make_dataset(tmp_path / "two", ["b", "c"])
    got = D.load_datasets([tmp_path / "one", tmp_path / "two"])
    assert {k: len(v) for k, v in got.items()} == {"one": 1, "two": 2}
    make_dataset(tmp_path / "x" / "one", ["z"])
    with pytest.raises(MedcoreError, match="two data folders are named 'one'"):
        D.load_datasets([tmp_path / "one", tmp_path / "x" / "one"])


@pytest.mark.needs_data
@pytest.mark.parametrize("folder", REAL_FOLDERS)
def test_every_shared_folder_reads_as_it_is(folder):
    samples = D.discover(SHARED_DATA / folder)
    assert len(samples) >= 4
    for sample in samples[:2]:
        image, mask = D.load_pair(sample)
        assert image.ndim == 3 and image.shape[2] == 3 and image.shape[:2] == mask.shape
        assert 0 < mask.mean() < 1  # a real foreground, not an all-grey misread


# ------------------------------------------------------------------------------------------
# Preprocessing


def test_preprocess_shape_and_range():
    rng = np.random.default_rng(0)
    image = rng.uniform(20, 200, size=(37, 53, 3)).astype(np.float32)
    out = D.preprocess_image(image, 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    assert not D.preprocess_image(np.full((8, 8, 3), 7.0, dtype=np.float32), 16).any()  # constant -> zeros


def test_torch_and_skimage_resizes_agree_closely():
    yy, xx = np.mgrid[0:90, 0:70]
    image = np.dstack([np.sin(yy / 9.0) * 100 + 120, np.cos(xx / 7.0) * 100 + 120, (yy + xx) % 255]).astype(np.float32)
    for size in (32, 200):
        a = D.preprocess_image(image, size, "torch")
        b = D.preprocess_image(image, size, "skimage")
        assert np.abs(a - b).mean() < 0.01


def test_mask_to_size_is_pixel_centre_nearest_like_pil():
    rng = np.random.default_rng(1)
    for (h, w), (oh, ow) in [((30, 40), (16, 16)), ((17, 9), (64, 64)), ((256, 256), (32, 32))]:
        mask = rng.random((h, w)) < 0.4
        ours = D.mask_to_size(mask, oh, ow)
        pil = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((ow, oh), Image.NEAREST)) > 0
        np.testing.assert_array_equal(ours, pil)


# ------------------------------------------------------------------------------------------
# Boxes


def test_tight_box_and_empty_box():
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:9, 10:21] = True
    assert D.box_from_mask(mask).tolist() == [10, 4, 20, 8]
    assert D.box_from_mask(np.zeros((20, 30), dtype=bool)).tolist() == [0, 0, 29, 19]


def test_widened_box_stays_within_jitter_and_image():
    rng = np.random.default_rng(0)
    box = np.array([10, 4, 20, 8], dtype=np.float32)
    seen = set()
    for _ in range(200):
        out = D.widen_box(box, 5, rng, 20, 30)
        grow = (box - out) * np.array([1, 1, -1, -1])
        assert (grow >= 0).all() and (grow <= 5).all()
        assert out[0] >= 0 and out[1] >= 0 and out[2] <= 29 and out[3] <= 19
        seen.update(grow[[0, 2]].tolist())
    assert seen == {0, 1, 2, 3, 4, 5}  # every widening from 0 to 5 occurs
    edge = D.widen_box(np.array([0, 0, 29, 19], dtype=np.float32), 5, rng, 20, 30)
    assert edge.tolist() == [0, 0, 29, 19]


def test_deterministic_box_per_file():
    box = np.array([30, 30, 60, 60], dtype=np.float32)

    def draw(seed, name):
        return D.widen_box(box, 5, D.file_rng(seed, name), 128, 128).tolist()

    assert draw(42, "a") == draw(42, "a")
    draws = {tuple(draw(42, f"img{i}")) for i in range(20)}
    assert len(draws) > 10  # files get different widenings
    assert [draw(42, f"img{i}") for i in range(5)] != [draw(7, f"img{i}") for i in range(5)]


# ------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize(("n", "sizes"), [(100, (60, 20, 20)), (5, (3, 1, 1)), (12, (8, 2, 2)), (20, (12, 4, 4)), (1, (1, 0, 0))])
def test_split_sizes(n, sizes):
    stems = [f"s{i:03d}" for i in range(n)]
    parts = D.split_stems(stems, 42)
    assert tuple(len(parts[k]) for k in D.SPLIT_NAMES) == sizes
    assert sorted(sum(parts.values(), [])) == stems  # disjoint and complete


def test_split_is_seeded_and_order_free():
    stems = [f"s{i}" for i in range(30)]
    assert D.split_stems(stems, 42) == D.split_stems(list(reversed(stems)), 42)
    assert D.split_stems(stems, 42) != D.split_stems(stems, 43)


def test_splits_written_then_reused(tmp_path):
    make_dataset(tmp_path / "one", [f"a{i}" for i in range(10)])
    make_dataset(tmp_path / "two", [f"b{i}" for i in range(5)])
    datasets = D.load_datasets([tmp_path / "one", tmp_path / "two"])
    path = tmp_path / "out" / "splits.json"
    first = D.resolve_splits(datasets, path)
    on_disk = json.loads(path.read_text())
    assert on_disk == first and on_disk["seed"] == 42
    assert [len(on_disk["datasets"]["one"][k]) for k in D.SPLIT_NAMES] == [6, 2, 2]
    # A split edited by hand is honoured, not recomputed.
    on_disk["datasets"]["one"] = {"train": [f"a{i}" for i in range(8)], "val": ["a8"], "test": ["a9"]}
    path.write_text(json.dumps(on_disk))
    again = D.resolve_splits(datasets, path, seed=7)
    assert D.select_split(datasets, again, "test")["one"][0].name == "a9"
    # A dataset new to the file is split and added.
    make_dataset(tmp_path / "three", ["c1", "c2", "c3"])
    datasets3 = D.load_datasets([tmp_path / "one", tmp_path / "three"])
    D.resolve_splits(datasets3, path)
    assert set(json.loads(path.read_text())["datasets"]) == {"one", "two", "three"}


def test_splits_file_errors(tmp_path):
    make_dataset(tmp_path / "one", ["a", "b", "c"])
    datasets = D.load_datasets([tmp_path / "one"])
    path = tmp_path / "splits.json"
    path.write_text("{not json")
    with pytest.raises(MedcoreError, match="cannot read splits file .*splits.json"):
        D.resolve_splits(datasets, path)
    path.write_text(json.dumps({"datasets": {"one": {"train": ["a", "zzz"], "val": [], "test": []}}}))
    with pytest.raises(MedcoreError, match="lists 'zzz' for dataset 'one'"):
        D.resolve_splits(datasets, path)
    path.write_text(json.dumps({"datasets": {"one": {"train": ["a", "b"], "val": ["c"], "test": ["a"]}}}))
    with pytest.raises(MedcoreError, match="lists 'a' of dataset 'one' more than once"):
        D.resolve_splits(datasets, path)
    path.write_text(json.dumps({"datasets": {"one": {"train": ["a"]}}}))
    with pytest.raises(MedcoreError, match="not a medcore-tp splits file"):
        D.resolve_splits(datasets, path)


def test_select_all_and_calibration(tmp_path):
    make_dataset(tmp_path / "one", [f"a{i}" for i in range(10)])
    datasets = D.load_datasets([tmp_path / "one"])
    splits = D.make_splits(datasets)
    assert len(D.select_split(datasets, splits, "all")["one"]) == 10
    train = D.select_split(datasets, splits, "train")["one"]
    assert D.calibration_subset(train, 4) == train[:4]
    assert D.calibration_subset(train, 128) == train
    with pytest.raises(MedcoreError, match="split bogus: must be one of"):
        D.select_split(datasets, splits, "bogus")


# ------------------------------------------------------------------------------------------
# torch Dataset


def test_dataset_items_and_dataloader(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a", "b", "c"], size=(24, 32))
    ds = D.SegmentationDataset(D.discover(root), D.InputSpec(64, 16), box_mode="tight")
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (64, 64) and item["mask_low"].shape == (16, 16)
    assert item["mask_original"].shape == (24, 32) and item["original_size"] == (24, 32)
    # Mask rows 2..11, cols 3..19 of 24x32 -> the input frame (x scale 2, y scale 8/3).
    assert item["box"].tolist() == D.box_from_mask(item["mask"].numpy()).tolist()
    assert item["box"].tolist() == [6, 5, 39, 31]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=D.collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["box"].shape == (2, 4)
    assert batch["index"] == [0, 1] and batch["errors"] == []


def test_dataset_box_modes(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a", "b"])
    samples = D.discover(root)
    tight = D.SegmentationDataset(samples, D.InputSpec(64, 16), box_mode="tight")[0]["box"]
    det = D.SegmentationDataset(samples, D.InputSpec(64, 16), box_mode="deterministic", box_jitter=5)
    assert det[0]["box"].tolist() == det[0]["box"].tolist()
    rnd = D.SegmentationDataset(samples, D.InputSpec(64, 16), box_mode="random", box_jitter=5)
    torch.manual_seed(3)
    first = [rnd[0]["box"].tolist() for _ in range(8)]
    torch.manual_seed(3)
    assert [rnd[0]["box"].tolist() for _ in range(8)] == first  # reproducible under the torch seed
    assert len({tuple(b) for b in first}) > 1  # but a new draw each time
    for box in first:
        grow = (tight - torch.tensor(box)) * torch.tensor([1, 1, -1, -1])
        assert (grow >= 0).all() and (grow <= 5).all()


def test_dataset_skip_bad(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a", "b"])
    (root / "images" / "b.png").write_bytes(b"garbage")
    samples = D.discover(root)
    with pytest.raises(MedcoreError, match="b.png"):
        D.SegmentationDataset(samples, D.InputSpec(32, 8))[1]
    ds = D.SegmentationDataset(samples, D.InputSpec(32, 8), skip_bad=True)
    batch = D.collate([ds[0], ds[1]])
    assert batch["index"] == [0] and batch["errors"][0][0] == 1 and "b.png" in batch["errors"][0][1]


def test_empty_mask_gets_full_image_box(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a"])
    Image.fromarray(np.zeros((24, 32), dtype=np.uint8)).save(root / "masks" / "a.png")
    item = D.SegmentationDataset(D.discover(root), D.InputSpec(64, 16), box_jitter=5)[0]
    assert item["box"].tolist() == [0, 0, 63, 63] and not item["mask"].any()


# ------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_is_deterministic_and_readable(tmp_path):
    a, b = synthetic_pairs(3, 64, seed=5), synthetic_pairs(3, 64, seed=5)
    for (ia, ma), (ib, mb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
        assert ia.shape == (64, 64, 3) and 0.01 < ma.mean() < 0.6
    assert not np.array_equal(synthetic_pairs(1, 64, seed=6)[0][1], a[0][1])
    root = write_synthetic_dataset(tmp_path / "synth", n=3, size=64, seed=5)
    samples = D.discover(root)
    assert len(samples) == 3
    np.testing.assert_array_equal(D.load_pair(samples[0])[1], a[0][1])


# ------------------------------------------------------------------------------------------
# Boxes from the original-resolution mask


def _blob_with_a_thin_tail(size=1000):
    """A square blob with a 1-px line reaching far to the right, on a row nearest-neighbour sampling
    to 100 px skips (it samples rows 5, 15, ..., 995)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[400:600, 300:500] = True
    mask[500, 500:951] = True
    return mask


def test_box_comes_from_the_original_mask_and_keeps_a_thin_extremity():
    mask = _blob_with_a_thin_tail()
    downsampled = D.fit_mask(mask, 100)
    assert not downsampled[:, 50:].any()  # nearest neighbour drops the tail...
    assert D.box_from_mask(downsampled).tolist() == [30, 40, 49, 59]
    # ...the box of the original, scaled: covers every input pixel an original pixel of the object overlaps
    assert D.scaled_box(mask, (100, 100)).tolist() == [30, 40, 95, 59]
    # longest-side fitting of a 1000 x 2000 image: the box lands in the fitted 50 x 100 part
    wide = np.zeros((1000, 2000), dtype=bool)
    wide[:, :1000] = mask
    assert D.scaled_box(wide, (50, 100)).tolist() == [15, 20, 47, 29]


def test_box_ignores_specks_smaller_than_an_input_pixel_but_not_thin_parts():
    mask = _blob_with_a_thin_tail()
    mask[0, 0] = True  # a lone artefact pixel (Kvasir-SEG's JPEG masks have such): 1 px < 100 px per input pixel
    assert D.scaled_box(mask, (100, 100)).tolist() == [30, 40, 95, 59]
    mask[0:12, 0:12] = True  # 144 px: more than one input pixel, a real part of the mask
    assert D.scaled_box(mask, (100, 100)).tolist() == [0, 0, 95, 59]
    assert D.scaled_box(np.zeros((30, 40), dtype=bool), (48, 64)).tolist() == [0, 0, 63, 47]
    # at the input's own size every pixel counts, and the box is the tight box
    small = np.zeros((20, 30), dtype=bool)
    small[4:9, 10:21] = True
    small[0, 0] = True
    assert D.scaled_box(small, (20, 30)).tolist() == D.box_from_mask(small).tolist() == [0, 0, 20, 8]


@pytest.mark.parametrize("box_mode", ["tight", "deterministic"])
def test_every_box_is_made_from_the_original_mask(tmp_path, box_mode):
    from medcore_tp.calibration import batch_from_pairs, batches_from_samples

    root = tmp_path / "thin"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    mask = _blob_with_a_thin_tail()
    Image.fromarray(np.full((1000, 1000, 3), 90, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / "a.png")
    samples = D.discover(root)
    spec = D.InputSpec(100, 25)
    item = D.SegmentationDataset(samples, spec, box_mode=box_mode, box_jitter=3)[0]
    x0, y0, x1, y1 = item["box"].tolist()
    if box_mode == "tight":
        assert [x0, y0, x1, y1] == [30, 40, 95, 59]
    else:  # widened from the same box, each side by 0-3 px
        assert 27 <= x0 <= 30 and 37 <= y0 <= 40 and 95 <= x1 <= 98 and 59 <= y1 <= 62
    assert batches_from_samples(samples, spec)[0].boxes[0].tolist() == [30, 40, 95, 59]  # calibration
    image = np.full((1000, 1000, 3), 90, np.float32)
    assert batch_from_pairs([(image, mask)], spec).boxes[0].tolist() == [30, 40, 95, 59]
