"""Exporting a dense or pruned model for deployment: ONNX, ``torch.export`` (.pt2) and safetensors.

Two parts are exported, as SAM deployments run them: the image encoder (images (B, 3, S, S) in
[0, 1] -> embeddings) and the box decoder (prompt encoder + mask decoder: embeddings and boxes
(B, 4) in the input frame -> low-res logits (B, 1, s, s)), both with a dynamic batch axis. The box
decoder decodes every image of the batch with its own box in one pass (segment_anything's decoder
repeats each image once per prompt; :class:`BoxDecoder` pairs them instead) and matches
:func:`medcore_tp.inference.decode_logits` image by image.

Files: ``--out model.onnx`` writes ``model.onnx`` (encoder) and ``model.decoder.onnx``; ``.pt2``
likewise. Each ONNX file carries a ``medcore_tp`` metadata entry (JSON: model name, architecture
record, input size, resize mode, the part it holds), which ``evaluate --backend onnxruntime`` reads.
A safetensors file holds the full state dict and, in its metadata, the same architecture record that
pruned ``.pth`` checkpoints carry, so :func:`medcore_tp.load_pruned` rebuilds it without pickles.

ONNX goes through the TorchScript-based exporter (``dynamo=False``): on these models it takes seconds
where the dynamo exporter takes half a minute, and it keeps the batch dynamic. TinyViT's
``PatchMerging`` reads the batch with ``len(x)``, which both tracers freeze to a constant; the exported
copy uses :class:`_TraceablePatchMerging` (``x.shape[0]``) instead. The user's model is never changed.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcore_tp.atomic import atomic_write
from medcore_tp.checkpoint import FORMAT_VERSION, arch_record
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import input_size
from medcore_tp.models.loading import PRUNED_FORMAT
from medcore_tp.models.spec import input_spec

FORMATS = ("onnx", "pt2", "safetensors")
ONNX_FORMAT = "medcore-tp-onnx"
METADATA_KEY = "medcore_tp"
OPSET = 17

__all__ = [
    "FORMATS", "BoxDecoder", "ExportCheck", "check_onnx", "decoder_path", "export", "export_onnx", "export_pt2",
    "example_inputs", "export_safetensors", "read_onnx_record",
]


class BoxDecoder(nn.Module):
    """Prompt encoder + mask decoder for one box per image: (embeddings, boxes) -> low-res logits.

    The single-mask output of segment_anything's ``MaskDecoder`` (its first mask token), computed for
    the B (image, box) pairs of a batch in one pass; shares the model's modules. In a bf16 / fp16 model
    the prompt encoder stays fp32 (segment_anything casts box coordinates to fp32 before its matrix
    product) and its outputs are cast to the embeddings' dtype.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        dec = self.mask_decoder
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        pos = self.prompt_encoder.get_dense_pe()
        if sparse.dtype != embeddings.dtype:  # a prompt encoder kept in fp32 beside a bf16 / fp16 model
            sparse, dense, pos = (t.to(embeddings.dtype) for t in (sparse, dense, pos))
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = embeddings + dense
        pos = pos.expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1, :])  # mask token 0: the single-mask output
        _, c2, h2, w2 = upscaled.shape
        return (hyper[:, None, :] @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)


def _traceable_patch_merging(base: type) -> type:
    class _TraceablePatchMerging(base):  # type: ignore[misc, valid-type]
        """TinyViT's ``PatchMerging`` reading the batch from the shape, so tracing keeps it dynamic."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 3:
                h, w = self.input_resolution
                x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
            x = self.act(self.conv1(x))
            x = self.act(self.conv2(x))
            x = self.conv3(x)
            return x.flatten(2).transpose(1, 2)

    return _TraceablePatchMerging


def exportable(model: nn.Module) -> nn.Module:
    """A CPU eval-mode copy of ``model`` whose code traces with a dynamic batch (see module docstring)."""
    out = copy.deepcopy(model).cpu().eval()
    swapped: dict[type, type] = {}
    for module in out.modules():
        cls = type(module)
        if cls.__name__ == "PatchMerging" and cls.__module__.endswith("tiny_vit_sam"):
            module.__class__ = swapped.setdefault(cls, _traceable_patch_merging(cls))
    return out


def decoder_path(path: str | os.PathLike) -> Path:
    """Where the box decoder of an export at ``path`` goes: ``model.onnx`` -> ``model.decoder.onnx``."""
    path = Path(path)
    return path.with_name(path.stem + ".decoder" + path.suffix)


def example_inputs(model: nn.Module, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed CPU fp32 inputs at the model's size: uniform images (seed 0) and one box per image, in pixels."""
    size = input_size(model)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen)
    boxes = torch.tensor([[0.2, 0.25, 0.7, 0.8]] * batch) * size
    return images, boxes


def _record(model: nn.Module, name: str, part: str, pruned: bool, decoder: Path | None) -> dict[str, Any]:
    spec = input_spec(model)
    return {"format": ONNX_FORMAT, "version": FORMAT_VERSION, "part": part, "model": name, "pruned": pruned,
            "arch": arch_record(model, name), "input_size": spec.input_size, "logit_size": spec.logit_size,
            "resize_mode": spec.resize_mode, "normalisation": spec.normalisation,
            "decoder": decoder.name if decoder is not None else None}


def _onnx_save(module: nn.Module, args: tuple, path: Path, names: tuple[list[str], list[str]],
               record: dict[str, Any]) -> None:
    import onnx

    inputs, outputs = names
    axes = {n: {0: "batch"} for n in inputs + outputs}

    def write(f) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings about the legacy exporter
            torch.onnx.export(module, args, f, dynamo=False, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)

    atomic_write(path, write)
    proto = onnx.load(os.fspath(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(record)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def export_onnx(model: nn.Module, path: str | os.PathLike, name: str, pruned: bool) -> tuple[Path, Path]:
    """Write the encoder to ``path`` and the box decoder beside it (:func:`decoder_path`)."""
    _need("onnx", "onnx")
    path = Path(path)
    model = exportable(model)
    images, boxes = example_inputs(model)
    with torch.no_grad():
        embeddings = model.image_encoder(images)
    dec = decoder_path(path)
    _onnx_save(model.image_encoder, (images,), path, (["images"], ["embeddings"]),
               _record(model, name, "encoder", pruned, dec))
    _onnx_save(BoxDecoder(model).eval(), (embeddings, boxes), dec, (["embeddings", "boxes"], ["logits"]),
               _record(model, name, "decoder", pruned, None))
    return path, dec


def export_pt2(model: nn.Module, path: str | os.PathLike) -> tuple[Path, Path]:
    """``torch.export`` the encoder to ``path`` and the box decoder beside it, batch dynamic."""
    path = Path(path)
    model = exportable(model)
    images, boxes = example_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        embeddings = model.image_encoder(images)
        enc = torch.export.export(model.image_encoder, (images,), dynamic_shapes=({0: batch},))
        dec = torch.export.export(BoxDecoder(model).eval(), (embeddings, boxes),
                                  dynamic_shapes=({0: batch}, {0: batch}))
    atomic_write(path, lambda f: torch.export.save(enc, f))
    dec_path = decoder_path(path)
    atomic_write(dec_path, lambda f: torch.export.save(dec, f))
    return path, dec_path


def export_safetensors(model: nn.Module, path: str | os.PathLike, name: str) -> Path:
    """The state dict as safetensors, the architecture record in the metadata (read by ``load_pruned``)."""
    _need("safetensors", "safetensors")
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": PRUNED_FORMAT, "version": str(FORMAT_VERSION), "arch": json.dumps(arch_record(model, name))}
    data = save(state, metadata=meta)
    atomic_write(path, lambda f: f.write(data))
    return Path(path)


def export(model: nn.Module, fmt: str, path: str | os.PathLike, name: str, pruned: bool) -> list[Path]:
    """Export ``model`` (architecture ``name``) in ``fmt``; returns the files written."""
    if fmt not in FORMATS:
        raise MedcoreError(f"--format {fmt}: unknown format, choose one of {', '.join(FORMATS)}")
    suffix = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}[fmt]
    if Path(path).suffix != suffix:
        raise MedcoreError(f"--out {path}: a {fmt} export needs a file name ending in {suffix}")
    if fmt == "onnx":
        return list(export_onnx(model, path, name, pruned))
    if fmt == "pt2":
        return list(export_pt2(model, path))
    return [export_safetensors(model, path, name)]


def _need(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise MedcoreError(f"this needs the {package} package: pip install medcore-tp[export]") from None


def read_onnx_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``medcore_tp`` metadata of an ONNX file written by :func:`export_onnx`; one-line errors."""
    _need("onnx", "onnx")
    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MedcoreError(f"--checkpoint {path}: file not found")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # protobuf raises DecodeError and others on foreign files
        raise MedcoreError(f"--checkpoint {path}: not an ONNX model (export one with medcore-tp export "
                           "--format onnx)") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta or not proto.graph.node:
        raise MedcoreError(f"--checkpoint {path}: an ONNX file without medcore-tp's record (export it with "
                           "medcore-tp export --format onnx)")
    return json.loads(meta[METADATA_KEY])


@dataclass
class ExportCheck:
    """ONNX Runtime against PyTorch on one image: max |difference| and the output scale, per output."""

    embeddings_diff: float
    embeddings_scale: float
    logits_diff: float
    logits_scale: float
    tolerance: float = 1e-4

    @property
    def passed(self) -> bool:
        """Both differences at most ``tolerance`` x the output's max |value|."""
        return (self.embeddings_diff <= self.tolerance * self.embeddings_scale
                and self.logits_diff <= self.tolerance * self.logits_scale)

    def describe(self) -> str:
        return (f"image embeddings max |diff| {self.embeddings_diff:.3g} (scale {self.embeddings_scale:.3g}), "
                f"mask logits max |diff| {self.logits_diff:.3g} (scale {self.logits_scale:.3g}); "
                f"limit {self.tolerance:g} x scale: {'passed' if self.passed else 'FAILED'}")


def check_onnx(model: nn.Module, encoder_file: str | os.PathLike, image: np.ndarray, box: np.ndarray,
               tolerance: float = 1e-4) -> ExportCheck:
    """Run the exported encoder and decoder in ONNX Runtime on ``image`` (3, S, S) with ``box`` (4,)
    (input frame) and compare with ``model`` in PyTorch (fp32, CPU); the decoder is checked on
    PyTorch's embeddings so that each part is measured on its own."""
    from medcore_tp.runtime import OnnxSam

    ort_model = OnnxSam(encoder_file)
    images = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
    boxes = torch.from_numpy(np.asarray(box, dtype=np.float32))[None]
    ref = exportable(model)
    with torch.no_grad():
        emb = ref.image_encoder(images)
        logits = BoxDecoder(ref)(emb, boxes)
    ort_emb = ort_model.encode(images.numpy())
    ort_logits = ort_model.decode(emb.numpy(), boxes.numpy())
    return ExportCheck(
        embeddings_diff=float(np.abs(ort_emb - emb.numpy()).max()), embeddings_scale=float(emb.abs().max()),
        logits_diff=float(np.abs(ort_logits - logits.numpy()).max()), logits_scale=float(logits.abs().max()),
        tolerance=tolerance,
    )
