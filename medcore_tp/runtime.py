"""Running an ONNX export in ONNX Runtime, in the shape the rest of medcore-tp expects of a model.

:class:`OnnxSam` opens the encoder file written by ``medcore-tp export --format onnx`` and the box
decoder beside it, and offers what :func:`medcore_tp.evaluate.evaluate` and
:func:`medcore_tp.inference.predict_logits` use: ``image_encoder.img_size``, the resize mode, a
``device`` and ``predict_logits(images, boxes)``, so the same data, boxes and metrics run through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from medcore_tp.errors import MedcoreError
from medcore_tp.export import read_onnx_record
from medcore_tp.preprocessing import InputSpec

__all__ = ["OnnxSam", "load_onnx_model", "ort_session"]


def ort_session(path: str | os.PathLike, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session on ``path`` (``threads`` intra-op threads, default torch's count)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MedcoreError("--backend onnxruntime needs onnxruntime: pip install medcore-tp[export]") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MedcoreError(f"--device {device}: this onnxruntime build has no CUDA provider "
                               "(pip install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)


class OnnxSam:
    """An exported encoder + box decoder pair in ONNX Runtime (inference only, fp32)."""

    training = False

    def __init__(self, encoder_file: str | os.PathLike, threads: int | None = None, device: str = "cpu") -> None:
        record = read_onnx_record(encoder_file)
        if record.get("part") != "encoder":
            raise MedcoreError(f"--checkpoint {encoder_file}: holds the medcore-tp {record.get('part')} part; "
                               "give the encoder file (the one without .decoder)")
        decoder_file = Path(encoder_file).with_name(record["decoder"])
        if not decoder_file.is_file():
            raise MedcoreError(f"--checkpoint {encoder_file}: its box decoder {decoder_file} is missing")
        dec_record = read_onnx_record(decoder_file)
        if dec_record.get("arch") != record.get("arch"):
            raise MedcoreError(f"--checkpoint {encoder_file}: {decoder_file} was exported from another model")
        self.record: dict[str, Any] = record
        self.encoder_file, self.decoder_file = Path(encoder_file), decoder_file
        self.encoder = ort_session(encoder_file, threads, device)
        self.decoder = ort_session(decoder_file, threads, device)
        self.image_encoder = SimpleNamespace(img_size=int(record["input_size"]))
        self.medcore_input_spec = InputSpec(int(record["input_size"]), int(record["logit_size"]),
                                            record["resize_mode"], record["normalisation"])
        self.device = torch.device("cpu")  # inputs and outputs live on the host

    def eval(self) -> OnnxSam:
        return self

    def train(self, mode: bool = True) -> OnnxSam:
        if mode:
            raise MedcoreError("an ONNX Runtime model cannot be trained")
        return self

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Image embeddings for (B, 3, S, S) float32 images."""
        return self.encoder.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Low-res logits (B, 1, s, s) for embeddings and one box (B, 4) per image, input frame."""
        return self.decoder.run(None, {"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32),
                                       "boxes": np.ascontiguousarray(boxes, dtype=np.float32)})[0]

    def predict_logits(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Same contract as :func:`medcore_tp.inference.predict_logits`."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(boxes.shape) != (images.shape[0], 4):
            raise ValueError(f"expected images (B, 3, S, S) and boxes (B, 4), got {tuple(images.shape)} "
                             f"and {tuple(boxes.shape)}")
        emb = self.encode(images.detach().cpu().float().numpy())
        return torch.from_numpy(self.decode(emb, boxes.detach().cpu().float().numpy()))


def load_onnx_model(name: str, checkpoint: str | None, random_init: bool = False,
                    device: str = "cpu") -> tuple[OnnxSam, dict[str, Any] | None]:
    """``evaluate --backend onnxruntime``: the export at ``checkpoint``, checked against ``--model name``;
    returns (model, architecture record when the export is of a pruned model, else None)."""
    from medcore_tp.models import model_config

    if random_init or checkpoint is None or not str(checkpoint).endswith(".onnx") and not os.path.isfile(checkpoint):
        raise MedcoreError("--backend onnxruntime needs --checkpoint MODEL.onnx (written by medcore-tp export)")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise MedcoreError(f"--device {device}: onnxruntime runs on cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedcoreError(f"--device {device}: CUDA is not available on this machine")
    model = OnnxSam(checkpoint, device="cpu" if device == "auto" else device)
    base = model.record.get("model")
    if base is None or model_config(base) != model_config(name):
        raise MedcoreError(f"--checkpoint {checkpoint}: was exported from {base}, which is not the architecture "
                           f"of model {name}")
    return model, (model.record["arch"] if model.record.get("pruned") else None)
