"""Export round trips on ``tiny`` and ``lite-tiny`` (pruned): ONNX Runtime and OpenVINO == PyTorch,
safetensors -> load_pruned == original, torch.export programs, evaluate through ONNX Runtime and
OpenVINO, and the one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medcore_tp import load_pruned, save_pruned
from medcore_tp.arch import adapter_for
from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.data import preprocess_image, read_image
from medcore_tp.errors import MedcoreError
from medcore_tp.evaluate import evaluate
from medcore_tp.export import BoxDecoder, check_onnx, export, read_onnx_record
from medcore_tp.inference import decode_logits, predict_logits
from medcore_tp.models import build_model
from medcore_tp.paths import data_dir
from medcore_tp.runtime import OnnxSam
from medcore_tp.synthetic import write_synthetic_dataset

KVASIR = data_dir("kvasir-seg") / "images"  # a real image for the checks when the data is here
PRUNED_SHAPES = {"tiny": ([2, 3, 1, 4], [100, 256, 30, 256]), "lite-tiny": ([1, 1, 2], [40, 96, 150])}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _pruned(name: str) -> torch.nn.Module:
    """A pruned-shape model with random weights (rel-pos / bias tables too, so they matter)."""
    torch.manual_seed(0)
    model = build_model(name, checkpoint=None) if name.startswith("lite") else build_model(name)
    adapter = adapter_for(model)
    adapter.resize(model.image_encoder, *PRUNED_SHAPES[name])
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "rel_pos" in pname or "attention_biases" in pname:
                p.normal_(0, 0.5)
    return model.train().eval()  # eval() refreshes TinyViT's cached bias table


def _real_image(model) -> np.ndarray:
    from medcore_tp.inference import input_size, resize_mode

    files = sorted(KVASIR.glob("*.jpg")) if KVASIR.is_dir() else []
    if files:
        raw = read_image(files[0])
    else:  # pragma: no cover - the shared data is on every development machine
        raw = np.random.default_rng(0).integers(0, 255, (300, 250, 3)).astype(np.uint8)
    return preprocess_image(raw.astype(np.float32), input_size(model), mode=resize_mode(model))


@pytest.fixture(scope="module", params=["tiny", "lite-tiny"])
def exported(request, tmp_path_factory):
    name = request.param
    model = _pruned(name)
    folder = tmp_path_factory.mktemp(name)
    pth = folder / "pruned.pth"
    save_pruned(model, pth, base=name)
    model = load_pruned(pth)  # exactly what a user exports: the rebuilt pruned model
    image = sorted(KVASIR.glob("*.jpg"))[0] if KVASIR.is_dir() else None
    res = run("export", "--model", name, "--checkpoint", pth, "--format", "onnx", "--out", folder / "model.onnx",
              *(["--check-image", image] if image else []))
    assert res.exit_code == 0, res.output
    assert "ONNX Runtime vs PyTorch on" in res.output and "passed" in res.output  # the command says it checked
    return name, model, pth, [folder / "model.onnx", folder / "model.decoder.onnx"]


def test_onnx_matches_pytorch_on_a_real_image(exported):
    name, model, _, files = exported
    assert [f.name for f in files] == ["model.onnx", "model.decoder.onnx"]
    record = read_onnx_record(files[0])
    assert record["model"] == name and record["pruned"] and record["arch"]["heads_per_block"] == PRUNED_SHAPES[name][0]
    image = _real_image(model)
    size = image.shape[-1]
    check = check_onnx(model, files[0], image, np.array([0.2, 0.3, 0.7, 0.8], dtype=np.float32) * size)
    assert check.passed, check.describe()
    assert check.embeddings_scale > 0.1 and check.logits_scale > 0  # a real output, not zeros


def test_onnx_dynamic_batch_matches_image_by_image_decoding(exported):
    """Batch 3 through ONNX Runtime == segment_anything's decoder run image by image in PyTorch."""
    _, model, _, files = exported
    size = model.image_encoder.img_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.7], [0.0, 0.4, 1.0, 1.0]]) * size
    ort_logits = OnnxSam(files[0]).predict_logits(images, boxes)
    ref = predict_logits(model, images, boxes)
    assert ort_logits.shape == ref.shape == (3, 1, *ref.shape[-2:])
    assert (ort_logits - ref).abs().max() <= 1e-4 * ref.abs().max()
    with torch.no_grad():  # and BoxDecoder itself equals decode_logits (batched vs per image)
        emb = model.image_encoder(images)
        torch.testing.assert_close(BoxDecoder(model)(emb, boxes), decode_logits(model, emb, boxes),
                                   rtol=1e-5, atol=1e-5)


OPENVINO_CHECK = """
import json, sys
import numpy as np, torch
from medcore_tp import load_pruned
from medcore_tp.inference import predict_logits
from medcore_tp.runtime import OnnxSam, openvino_bf16
model = load_pruned(sys.argv[1]).eval()
images = torch.from_numpy(np.load(sys.argv[3]))
boxes = torch.tensor([[0.2, 0.3, 0.7, 0.8], [0.1, 0.1, 0.9, 0.6]]) * model.image_encoder.img_size
ref_logits = predict_logits(model, images, boxes)
with torch.no_grad():
    ref_emb = model.image_encoder(images)
out = {}
for precision in ("fp32", "bf16") if openvino_bf16() else ("fp32",):
    ov = OnnxSam(sys.argv[2], runtime="openvino", precision=precision)
    emb = torch.from_numpy(ov.encode(images.numpy()))
    out[precision] = {"embeddings": float((emb - ref_emb).abs().max() / ref_emb.abs().max()),
                      "logits": float((ov.predict_logits(images, boxes) - ref_logits).abs().max()
                                      / ref_logits.abs().max())}
print(json.dumps(out))
"""


def test_openvino_matches_pytorch_in_fp32_and_stays_close_in_bf16(exported, tmp_path, openvino_has_bf16, run_python):
    """The same export in OpenVINO (in a child process, see conftest): fp32 to 1e-4 of the output scale,
    like ONNX Runtime; bf16 (where the CPU has it) within a few percent, the rounding of 8-bit
    mantissas through a few layers."""
    _, model, pth, files = exported
    images = torch.from_numpy(_real_image(model))[None].repeat(2, 1, 1, 1)
    images[1] = images[1].flip(-1)
    np.save(tmp_path / "images.npy", images.numpy())
    out = run_python(OPENVINO_CHECK, str(pth), str(files[0]), str(tmp_path / "images.npy"))
    assert out.returncode == 0, out.stderr
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert errors["fp32"]["embeddings"] <= 1e-4 and errors["fp32"]["logits"] <= 1e-4
    if not openvino_has_bf16:
        pytest.skip("this CPU has no bf16 arithmetic for OpenVINO")
    assert 0 < errors["bf16"]["embeddings"] <= 0.05  # not zero: it did compute in bf16


@pytest.mark.slow
def test_evaluate_through_onnxruntime_gives_the_same_metrics(exported, tmp_path):
    name, model, _, files = exported
    data = write_synthetic_dataset(tmp_path / "synth", n=3, size=96, seed=1)
    kw = dict(split="all", progress=False, box_jitter=0, batch_size=2)
    ref = evaluate(model, [data], **kw)
    got = evaluate(OnnxSam(files[0]), [data], **kw)
    for r, g in zip(ref.rows, got.rows, strict=True):
        for metric in ("dice", "boundary_f1", "hd95"):
            assert g[metric] == pytest.approx(r[metric], abs=1e-3)
    if name != "tiny":
        return  # the command once is enough
    res = run("evaluate", "--model", name, "--backend", "onnxruntime", "--checkpoint", files[0], "--data", data,
              "--split", "all", "--box-jitter", 0, "--out", tmp_path / "ev", "--no-progress")
    assert res.exit_code == 0, res.output
    assert f"{name} (pruned, onnxruntime)" in res.output
    # OpenVINO in fp32 through the command (a child process, see conftest): PyTorch's per-image numbers
    out = subprocess.run([sys.executable, "-m", "medcore_tp", "evaluate", "--model", name, "--backend", "openvino",
                          "--checkpoint", str(files[0]), "--data", str(data), "--split", "all", "--box-jitter", "0",
                          "--batch-size", "2", "--out", str(tmp_path / "ov"), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"{name} (pruned, openvino)" in out.stdout
    with open(tmp_path / "ov" / "per_image.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert len(rows) == len(ref.rows)
    for r in ref.rows:
        for metric in ("dice", "boundary_f1", "hd95"):
            assert float(rows[r["name"]][metric]) == pytest.approx(r[metric], abs=1e-3)


def test_safetensors_round_trip(exported, tmp_path):
    name, model, _, _ = exported
    path = export(model, "safetensors", tmp_path / "m.safetensors", name, pruned=True)[0]
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle
    back = load_pruned(path)
    assert adapter_for(back).heads_per_block(back.image_encoder) == PRUNED_SHAPES[name][0]
    ref = model.state_dict()
    assert set(back.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())
    size = model.image_encoder.img_size
    x = torch.rand(1, 3, size, size)
    box = torch.tensor([[2.0, 3.0, size - 4.0, size - 2.0]])
    torch.testing.assert_close(predict_logits(back, x, box), predict_logits(model, x, box), rtol=0, atol=0)
    assert load_model(name, path)[1]["mlp_per_block"] == PRUNED_SHAPES[name][1]  # evaluate/bench read it too
    other = "lite-tiny" if name == "tiny" else "tiny"
    with pytest.raises(MedcoreError, match=f"was pruned from {name}, which is not the architecture of model {other}"):
        load_model(other, path)


@pytest.mark.slow
def test_pt2_export_through_the_command(tmp_path):
    pth = tmp_path / "pruned.pth"
    save_pruned(_pruned("tiny"), pth, base="tiny")
    res = run("export", "--model", "tiny", "--checkpoint", pth, "--format", "pt2", "--out", tmp_path / "t.pt2")
    assert res.exit_code == 0, res.output
    assert "torch.export program vs PyTorch" in res.output and "passed" in res.output
    program = torch.export.load(str(tmp_path / "t.decoder.pt2")).module()
    model = load_pruned(pth)
    with torch.no_grad():
        emb = model.image_encoder(torch.rand(3, 3, 128, 128))
        boxes = torch.tensor([[10.0, 10.0, 90.0, 100.0]] * 3)
        torch.testing.assert_close(program(emb, boxes), decode_logits(model, emb, boxes), rtol=1e-5, atol=1e-5)


# ---- bad inputs: one line each, before any work ----


def _error_line(res) -> str:
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_export_checkpoint_not_matching_model(tmp_path, exported):
    name, _, pth, _ = exported
    other = "lite-tiny" if name == "tiny" else "tiny"
    res = run("export", "--model", other, "--checkpoint", pth, "--format", "onnx", "--out", tmp_path / "x.onnx")
    assert f"was pruned from {name}, which is not the architecture of model {other}" in _error_line(res)
    assert not (tmp_path / "x.onnx").exists()


def test_export_unknown_format_and_wrong_suffix(tmp_path):
    res = run("export", "--model", "tiny", "--random-init", "--format", "tflite", "--out", tmp_path / "x.tflite")
    assert "--format tflite: unknown format, choose one of onnx, pt2, safetensors" in _error_line(res)
    res = run("export", "--model", "tiny", "--random-init", "--format", "onnx", "--out", tmp_path / "x.pth")
    assert "needs a file name ending in .onnx" in _error_line(res)


def test_evaluate_onnxruntime_on_a_file_that_is_not_onnx(tmp_path):
    pth = tmp_path / "dense.pth"
    torch.save(build_model("tiny").state_dict(), pth)
    data = write_synthetic_dataset(tmp_path / "synth", n=2, size=64)
    res = run("evaluate", "--model", "tiny", "--backend", "onnxruntime", "--checkpoint", pth, "--data", data,
              "--split", "all", "--out", tmp_path / "ev")
    assert f"--checkpoint {pth}: not an ONNX model" in _error_line(res)
    assert not (tmp_path / "ev").exists()
    res = run("evaluate", "--model", "tiny", "--backend", "openvino", "--checkpoint", pth, "--data", data,
              "--split", "all", "--out", tmp_path / "ev")
    assert f"--checkpoint {pth}: not an ONNX model" in _error_line(res)
    res = run("evaluate", "--model", "tiny", "--backend", "onnxruntime", "--dtype", "bf16", "--checkpoint", pth,
              "--data", data, "--split", "all", "--out", tmp_path / "ev")
    assert "--dtype bf16: the onnxruntime backend runs fp32 only (openvino runs bf16)" in _error_line(res)
    assert not (tmp_path / "ev").exists()


def test_check_runtime_names_the_parameter_and_the_cli_its_flag(tmp_path):
    from medcore_tp.runtime import check_runtime

    with pytest.raises(MedcoreError) as err:
        check_runtime("onnxruntime", "bf16")
    assert err.value.param == "precision" and str(err.value).startswith("precision bf16: the onnxruntime backend")
    with pytest.raises(MedcoreError) as err:
        check_runtime("openvino", "fp32", "cuda")
    assert err.value.param == "device"
    with pytest.raises(MedcoreError) as err:
        check_runtime("tensorrt")
    assert err.value.param == "runtime"
    check_runtime("openvino", "fp32")  # runs here: no error
    from medcore_tp.cli._common import param_flags

    # each command's own flag: evaluate takes one --backend, bench a list (--backends)
    assert err.value.with_flags(param_flags("evaluate")).startswith("--backend tensorrt:")
    assert err.value.with_flags(param_flags("bench")).startswith("--backends tensorrt:")
    data = write_synthetic_dataset(tmp_path / "synth", n=2, size=64)
    res = run("evaluate", "--model", "tiny", "--random-init", "--dtype", "bf16", "--data", data, "--split", "all",
              "--out", tmp_path / "ev")
    assert "--dtype bf16: --backend torch evaluates in fp32" in _error_line(res)
    assert not (tmp_path / "ev").exists()
