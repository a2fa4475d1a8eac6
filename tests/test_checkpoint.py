"""Pruned checkpoints: one file, architecture record, reload with segment_anything classes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from medcore_tp import (
    BlockPlan,
    apply_plan,
    build_model,
    load_model,
    load_pruned,
    prepare_pruning,
    save_pruned,
)
from medcore_tp.atomic import save_torch


@pytest.fixture
def pruned_tiny(tiny_model):
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, {0: BlockPlan(heads=(0, 2), mlp=tuple(range(100))), 3: BlockPlan(heads=(1,))})
    return tiny_model


def test_record_and_stock_classes(tmp_path, pruned_tiny):
    path = tmp_path / "pruned.pth"
    save_pruned(pruned_tiny, path, base="tiny")
    raw = torch.load(path, weights_only=True)  # no pickled modules
    assert raw["arch"] == {"family": "sam_vit", "base": "tiny", "heads_per_block": [2, 4, 4, 3],
                           "mlp_per_block": [156, 256, 256, 256]}
    model = load_pruned(path)
    blocks = model.image_encoder.blocks
    assert all(type(b.attn) is Attention for b in blocks)
    assert [b.attn.num_heads for b in blocks] == [2, 4, 4, 3]
    assert blocks[0].attn.scale == pytest.approx(16**-0.5)


def test_reload_in_a_new_process_gives_identical_outputs(tmp_path, pruned_tiny, tiny_input):
    path, inp, out = tmp_path / "pruned.pth", tmp_path / "x.pt", tmp_path / "y.pt"
    save_pruned(pruned_tiny, path, base="tiny")
    torch.save(tiny_input, inp)
    with torch.no_grad():
        expected = load_pruned(path).image_encoder(tiny_input)
        in_memory = pruned_tiny.image_encoder(tiny_input)
    code = (
        "import torch, medcore_tp, sys; m = medcore_tp.load_pruned(sys.argv[1]);"
        "torch.save(m.image_encoder(torch.load(sys.argv[2])).detach(), sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(inp), str(out)], check=True)
    got = torch.load(out)
    assert torch.equal(got, expected)
    # the in-memory (prepared) model computes the same function up to rounding
    assert (in_memory - got).abs().max() <= 1e-5 * got.abs().max()


def test_load_model_accepts_dense_and_pruned(tmp_path, pruned_tiny):
    path = tmp_path / "pruned.pth"
    save_pruned(pruned_tiny, path, base="tiny")
    model, record = load_model("tiny", path)
    assert record["heads_per_block"] == [2, 4, 4, 3]
    dense_path = tmp_path / "dense.pth"
    torch.save(build_model("tiny").state_dict(), dense_path)
    _, record = load_model("tiny", dense_path)
    assert record is None


def test_interrupted_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "pruned.pth"
    save_torch({"good": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt  # as if the process were stopped half-way through writing

    with pytest.raises(KeyboardInterrupt):
        save_torch({"good": torch.zeros(3), "bad": Boom()}, path)
    assert torch.equal(torch.load(path)["good"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pth"]  # no temp file left behind
