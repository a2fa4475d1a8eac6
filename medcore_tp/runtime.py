"""Running an ONNX export in ONNX Runtime or OpenVINO, in the shape the rest of medcore-tp expects of a model.

:class:`OnnxSam` opens the encoder file written by ``medcore-tp export --format onnx`` and the box
decoder beside it, and offers what :func:`medcore_tp.evaluate.evaluate` and
:func:`medcore_tp.inference.predict_logits` use: ``image_encoder.img_size``, the resize mode, a
``device`` and ``predict_logits(images, boxes)``, so the same data, boxes and metrics run through it.

Runtimes (:data:`RUNTIMES`): ``onnxruntime`` (fp32) and ``openvino`` (CPU; ``fp32``, or ``bf16``
where the CPU has bf16 arithmetic, e.g. AMX or AVX512-BF16: OpenVINO then runs its matrix products
in bf16, which changes the outputs by about 1-2% of their scale, so measure the segmentation with
``evaluate --backend openvino --dtype bf16`` before deploying it). OpenVINO's own default on such CPUs
is bf16; here fp32 stays fp32 unless bf16 is asked for.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from medcore_tp.errors import MedcoreError
from medcore_tp.export import read_onnx_record
from medcore_tp.preprocessing import InputSpec

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
# what each runtime computes in: ONNX Runtime runs the fp32 export as it is
RUNTIME_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": PRECISIONS}

__all__ = ["PRECISIONS", "RUNTIMES", "RUNTIME_PRECISIONS", "OnnxSam", "check_runtime", "load_onnx_model",
           "openvino_bf16", "ort_session", "ov_session"]


def ort_session(path: str | os.PathLike, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session on ``path`` (``threads`` intra-op threads, default torch's count)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MedcoreError("runtime onnxruntime: needs the onnxruntime package: pip install medcore-tp[export]",
                           "runtime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MedcoreError(f"device {device}: this onnxruntime build has no CUDA provider "
                               "(pip install onnxruntime-gpu)", "device")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise MedcoreError("runtime openvino: needs the openvino package: pip install medcore-tp[export]",
                           "runtime") from None
    return openvino


@functools.cache
def openvino_bf16() -> bool:
    """Whether OpenVINO can run bf16 arithmetic on this machine's CPU (asked once per process)."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_runtime(runtime: str, precision: str = "fp32", device: str = "cpu") -> None:
    """Refuse, in one line naming the parameter, a ``runtime`` / ``precision`` / ``device`` combination
    that cannot run here (:data:`RUNTIME_PRECISIONS`; OpenVINO runs on the CPU, bf16 only where the CPU
    has bf16 arithmetic)."""
    if runtime not in RUNTIMES:
        raise MedcoreError(f"runtime {runtime}: must be one of {', '.join(RUNTIMES)}", "runtime")
    allowed = RUNTIME_PRECISIONS[runtime]
    if precision not in allowed:
        others = [r for r, kinds in RUNTIME_PRECISIONS.items() if precision in kinds]
        also = f" ({others[0]} runs {precision})" if others else ""
        raise MedcoreError(f"precision {precision}: the {runtime} backend runs {' or '.join(allowed)} only{also}",
                           "precision")
    if runtime == "openvino" and device != "cpu":
        raise MedcoreError(f"device {device}: the openvino backend runs on cpu only here", "device")
    if runtime == "openvino" and precision == "bf16" and not openvino_bf16():
        raise MedcoreError("precision bf16: this CPU has no bf16 arithmetic for openvino (needs AVX512-BF16 or AMX); "
                           "fp32 runs everywhere", "precision")


class _OpenVinoSession:
    """An OpenVINO compiled model with ONNX Runtime's ``run(None, feeds)`` call (outputs in order)."""

    def __init__(self, compiled) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def run(self, _names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        return [np.array(result[port]) for port in self._compiled.outputs]


def ov_session(path: str | os.PathLike, threads: int | None = None, precision: str = "fp32") -> _OpenVinoSession:
    """An OpenVINO CPU model of the ONNX file ``path`` (``threads`` inference threads, default torch's
    count), computing in ``precision`` (``fp32`` or ``bf16``), tuned for latency."""
    check_runtime("openvino", precision)
    ov = _openvino()
    config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}
    return _OpenVinoSession(ov.Core().compile_model(os.fspath(path), "CPU", config))


class OnnxSam:
    """An exported encoder + box decoder pair in ONNX Runtime or OpenVINO (inference only).

    ``runtime``: ``onnxruntime`` (fp32; cpu or cuda) or ``openvino`` (cpu; ``precision`` fp32 or bf16)."""

    training = False

    def __init__(self, encoder_file: str | os.PathLike, threads: int | None = None, device: str = "cpu",
                 runtime: str = "onnxruntime", precision: str = "fp32") -> None:
        check_runtime(runtime, precision, device)
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
        self.runtime, self.precision = runtime, precision
        if runtime == "openvino":
            self.encoder = ov_session(encoder_file, threads, precision)
            self.decoder = ov_session(decoder_file, threads, precision)
        else:
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
            raise MedcoreError(f"an exported model in {self.runtime} cannot be trained")
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


def load_onnx_model(name: str, checkpoint: str | None, random_init: bool = False, device: str = "cpu",
                    runtime: str = "onnxruntime", precision: str = "fp32") -> tuple[OnnxSam, dict[str, Any] | None]:
    """``evaluate --backend onnxruntime|openvino``: the export at ``checkpoint``, checked against
    ``--model name``; returns (model, architecture record when the export is of a pruned model, else None)."""
    from medcore_tp.models import model_config

    if random_init or checkpoint is None or not str(checkpoint).endswith(".onnx") and not os.path.isfile(checkpoint):
        raise MedcoreError(f"checkpoint: the {runtime} backend needs an ONNX model written by medcore-tp export "
                           "(MODEL.onnx), not random weights", "checkpoint")
    check_runtime(runtime, precision, "cpu" if device == "auto" else device)  # openvino: cpu only
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise MedcoreError(f"device {device}: {runtime} runs on cpu or cuda", "device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedcoreError(f"device {device}: CUDA is not available on this machine", "device")
    model = OnnxSam(checkpoint, device="cpu" if device == "auto" else device, runtime=runtime, precision=precision)
    base = model.record.get("model")
    if base is None or model_config(base) != model_config(name):
        raise MedcoreError(f"checkpoint {checkpoint}: was exported from {base}, which is not the architecture "
                           f"of model {name}", "checkpoint")
    return model, (model.record["arch"] if model.record.get("pruned") else None)
