"""Building models by name and loading real-format checkpoints, with one-line errors."""

from __future__ import annotations

import pytest
import torch

from medcore_tp import MedcoreError, build_model, load_model, save_pruned
from medcore_tp.profile import count_params


def _encoder_params_by_formula(d: int, depth: int, global_blocks: int, hd: int = 64, window: int = 14) -> int:
    """Independent count of a SAM ViT encoder's parameters from its hyper-parameters."""
    patch = 3 * 16 * 16 * d + d
    pos = 64 * 64 * d
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    rel_windowed, rel_global = 2 * (2 * window - 1) * hd, 2 * (2 * 64 - 1) * hd
    neck = d * 256 + 2 * 256 + 256 * 256 * 9 + 2 * 256
    return patch + pos + depth * block + (depth - global_blocks) * rel_windowed + global_blocks * rel_global + neck


@pytest.mark.parametrize(
    "name, d, depth, hd",
    [("medsam", 768, 12, 64), ("sam-vit-b", 768, 12, 64), ("sam-vit-l", 1024, 24, 64), ("sam-vit-h", 1280, 32, 80)],
)
def test_encoder_sizes_of_the_sam_family(name, d, depth, hd):
    model = build_model(name, device="meta")
    assert count_params(model.image_encoder) == _encoder_params_by_formula(d, depth, global_blocks=4, hd=hd)
    if d == 768:
        assert count_params(model.image_encoder) == 89_670_912


def _sam_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_raw_state_dict_loads_identically(tmp_path, tiny_model, tiny_input):
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(_sam_state(tiny_model), path)  # the real format: a plain {key: tensor} dict
    loaded = build_model("tiny", path)
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(tiny_input), tiny_model.image_encoder(tiny_input))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_training_checkpoint_with_or_without_module_prefix(tmp_path, tiny_model, prefix):
    state = {prefix + k: v for k, v in _sam_state(tiny_model).items()}
    opt = torch.optim.AdamW(tiny_model.parameters())
    path = tmp_path / "train.pth"
    torch.save({"model": state, "optimizer": opt.state_dict(), "epoch": 3}, path)
    loaded = build_model("tiny", path)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_missing_file(tmp_path):
    with pytest.raises(MedcoreError, match=r"checkpoint .*nope\.pth: file not found"):
        build_model("tiny", tmp_path / "nope.pth")


def test_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is text, not a checkpoint")
    with pytest.raises(MedcoreError, match=r"notes\.pth: not a torch checkpoint \(it starts with b'this'"):
        build_model("tiny", path)


def test_keys_that_do_not_match_name_the_first_few(tmp_path, tiny_model):
    state = _sam_state(tiny_model)
    for k in [k for k in state if k.startswith("image_encoder.blocks.3.")]:
        del state[k]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(MedcoreError) as err:
        build_model("tiny", path)
    msg = str(err.value)
    assert "\n" not in msg and "partial.pth" in msg and "does not match tiny" in msg
    assert "missing keys image_encoder.blocks.3." in msg and "(+" in msg and "unexpected keys extra.weight" in msg


def test_shapes_that_do_not_match(tmp_path, tiny_model):
    path = tmp_path / "vitb.pth"
    torch.save(_sam_state(tiny_model), path)
    with pytest.raises(MedcoreError, match=r"does not match sam-vit-b: .*shape mismatch image_encoder\.pos_embed"):
        build_model("sam-vit-b", path)


def test_pruned_checkpoint_where_a_dense_one_is_expected(tmp_path, tiny_model):
    path = tmp_path / "pruned.pth"
    save_pruned(tiny_model, path, base="tiny")
    with pytest.raises(MedcoreError, match=r"is a pruned medcore-tp checkpoint \(base tiny\), a dense one is expected"):
        build_model("tiny", path)


def test_pruned_checkpoint_of_another_architecture(tmp_path, tiny_model):
    path = tmp_path / "pruned.pth"
    save_pruned(tiny_model, path, base="tiny")
    with pytest.raises(MedcoreError, match="was pruned from tiny, which is not the architecture of model medsam"):
        load_model("medsam", path)


def test_unknown_model_name():
    with pytest.raises(MedcoreError, match="model vit-z: unknown model"):
        build_model("vit-z")
