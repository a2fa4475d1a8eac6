"""Recovery after each pruning stage: a short, boundary-focused distillation of the encoder.

Per step (a batch of samples, 1 by default, drawn with replacement with probability proportional to
perimeter / (sqrt(area) + 1), the perimeter being the pixels of the 3x3 morphological gradient of the
low-res mask), with z the low-res logits, Z the logits upsampled to the input size, m / M the masks at
those sizes, e the image embedding and ``_t`` the teacher (a frozen copy of the model taken when the
stage starts, before its groups are removed, or the dense model: ``PruneConfig.recover_teacher``):

    L = 0.5 BCE(Z, M) + 0.5 (1 - Dice(Z, M))
      + 1.0 mean((1 + 4 band(M)) BCE(Z, M))
      + 0.5 MSE(e, e_t)
      + 2.0 mean(band(m) (z - z_t)^2)
      + 0.5 mean_{|f| > 0.25 cycles/px} |rFFT2(sigmoid(z)) - rFFT2(m)|

Each term is a mean over pixels (or embedding entries) of each sample, averaged over the batch.
The teacher is frozen for the whole stage, so its embedding and logits are computed once per sample
(:class:`TeacherOutputs`) the first time that sample is drawn: with 100 draws from about 30
calibration images a step mostly costs one student forward + backward.
Only the encoder's trunk trains (AdamW, lr 1e-5 unless told otherwise, weight decay 0; the rate held
constant, or with ``schedule="cosine"`` annealed from lr to 0 along the stage's steps): its stem (the
layers before the first prunable block, ``Adapter.STEM_PREFIXES``: LiteMedSAM's patch embedding and
MBConv stage, SAM ViT's patch and position embeddings) is never pruned, so recovery leaves it as it is,
and while the student's stem equals the teacher's, each sample's stem output is computed once, with the
teacher's outputs, and both models run from it (:meth:`TeacherOutputs.features`): on LiteMedSAM the
stem is about two thirds of a full-resolution forward + backward. Under torchrun the encoder trains through
DistributedDataParallel: each step's global batch (``batch_size`` x processes samples) is drawn the
same way on every rank and dealt out by rank, so N processes match one process with N x the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from medcore_tp.arch import adapter_for
from medcore_tp.calibration import CalibrationBatch, single_samples, train_with_frozen_norms
from medcore_tp.distributed import all_reduce_sum, data_parallel, is_main, my_share, world_size
from medcore_tp.inference import decode_logits, input_size
from medcore_tp.losses import morphological_band, recovery_loss
from medcore_tp.monitor import DEFAULT_CHECKS, BestState, check_steps, logit_quality


def sampling_weights(masks: torch.Tensor) -> torch.Tensor:
    """perimeter / (sqrt(area) + 1) per low-res mask (N, h, w); all-zero weights become uniform."""
    perimeter = morphological_band(masks).flatten(1).sum(1)
    area = masks.flatten(1).float().sum(1)
    w = perimeter / (area.sqrt() + 1)
    return w if float(w.sum()) > 0 else torch.ones_like(w)


def stem_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Prefixes, in ``model.named_parameters()``, of its encoder stem's parameters (recovery leaves them)."""
    return tuple(f"image_encoder.{p}" for p in adapter_for(model).STEM_PREFIXES)


def _stem_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    prefixes = adapter_for(encoder).STEM_PREFIXES
    return {n: t for n, t in [*encoder.named_parameters(), *encoder.named_buffers()] if n.startswith(prefixes)}


def same_stem(a: nn.Module, b: nn.Module) -> bool:
    """Whether two SAM-style models' encoder stems hold equal weights (so their stem outputs agree)."""
    sa, sb = _stem_state(a.image_encoder), _stem_state(b.image_encoder)
    return sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa)


def student_encoder(model: nn.Module, targets: TeacherOutputs) -> nn.Module:
    """What runs ``model``'s encoder against ``targets``: a :class:`StemTrunk` fed the cached stem
    outputs when its stem is the teacher's, else the whole encoder fed the images."""
    return StemTrunk(model.image_encoder) if same_stem(model, targets.teacher) else model.image_encoder


class StemTrunk(nn.Module):
    """An encoder run from its stem's output (``Adapter.trunk_forward``), as a module (DDP wraps it)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self._adapter = adapter_for(encoder)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._adapter.trunk_forward(self.encoder, features)


class TeacherOutputs:
    """A frozen teacher's image embedding and low-res logits for each sample of ``pool``, with the
    sample's stem output (:meth:`features`), each computed (image by image, in eval mode, without
    gradients) the first time it is asked for and kept on the device it was computed on. Keeps
    references: it is valid while ``teacher`` does not change."""

    def __init__(self, teacher: nn.Module, pool: Sequence[CalibrationBatch]):
        self.teacher = teacher.eval().requires_grad_(False)
        self._adapter = adapter_for(teacher)
        self.images = torch.cat([b.images for b in pool]) if pool else torch.empty(0)
        self.boxes = torch.cat([b.boxes for b in pool]) if pool else torch.empty(0, 4)
        self.masks = torch.cat([b.masks for b in pool]) if pool else torch.empty(0)
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stems: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def computed(self) -> int:
        """How many samples' outputs have been computed so far."""
        return len(self._kept)

    @torch.no_grad()
    def features(self, idx: Sequence[int]) -> torch.Tensor:
        """The teacher's stem output for the samples ``idx`` (any model whose stem is the same, see
        :func:`same_stem`, continues from it)."""
        device = next(self.teacher.parameters()).device
        for i in idx:
            if i not in self._stems:
                self._stems[i] = self._adapter.stem_forward(self.teacher.image_encoder, self.images[i : i + 1].to(device))
        # one sample keeps the stem's own memory layout (a copy could change the trunk's float rounding)
        return self._stems[idx[0]] if len(idx) == 1 else torch.cat([self._stems[i] for i in idx])

    @torch.no_grad()
    def get(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, low-res logits) of the samples ``idx``, in that order."""
        for i in idx:
            if i not in self._kept:
                emb = self._adapter.trunk_forward(self.teacher.image_encoder, self.features([i]))
                self._kept[i] = (emb, decode_logits(self.teacher, emb, self.boxes[i : i + 1]))
        return (torch.cat([self._kept[i][0] for i in idx]), torch.cat([self._kept[i][1] for i in idx]))


def recover(
    model: nn.Module,
    teacher: nn.Module,
    pool: Sequence[CalibrationBatch],
    steps: int = 100,
    lr: float = 1e-5,
    seed: int = 0,
    progress: bool = False,
    description: str = "recovery",
    batch_size: int = 1,
    monitor: Sequence[CalibrationBatch] | None = None,
    best: BestState | None = None,
    checks: int = DEFAULT_CHECKS,
    schedule: str = "constant",
) -> list[float]:
    """Train ``model``'s encoder towards ``teacher`` (frozen) in place; returns the per-step losses.

    ``teacher`` is the model as it was when the pruning stage started, before its groups were removed
    (or the dense model).
    ``batch_size`` is per process; the returned losses are means over each step's global batch.
    ``monitor`` (held-back samples with masks) and ``best`` (an empty :class:`BestState`): their
    Dice / Boundary F1 and recovery loss (:func:`held_back_check`) are checked before the first step
    and ``checks`` times along the run, and the encoder ends with the weights of the best check when
    the last one is clearly worse (:class:`medcore_tp.monitor.BestState`; every process computes the
    same checks). ``schedule``: ``constant`` (lr at every step) or ``cosine`` (lr at the first step,
    annealed to 0 after the last, :func:`learning_rates`).
    """
    rates = learning_rates(lr, steps, schedule)
    if steps <= 0:
        return []
    watch = monitor is not None and best is not None and len(monitor) > 0
    check_at = check_steps(steps, checks) if watch else set()
    targets = TeacherOutputs(teacher, pool)
    measure = partial(held_back_check, targets=TeacherOutputs(teacher, monitor)) if watch else None
    weights = sampling_weights(targets.masks)
    gen = torch.Generator().manual_seed(seed)
    world = world_size()
    draws = torch.multinomial(weights, steps * batch_size * world, replacement=True, generator=gen)
    order = draws.view(steps, batch_size * world).tolist()

    encoder = model.image_encoder
    stem = stem_prefixes(model)
    frozen = [p for n, p in model.named_parameters() if (not n.startswith("image_encoder.") or n.startswith(stem))
              and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    device = next(encoder.parameters()).device
    was_training = model.training
    if watch:
        best.check(0, model, measure)
    train_with_frozen_norms(model)
    trained = data_parallel(student_encoder(model, targets))
    losses = torch.zeros(steps, dtype=torch.float64, device=device)
    try:
        for step, batch in enumerate(tqdm(order, desc=description, disable=not (progress and is_main()), leave=False)):
            mine, _ = my_share(batch)  # equal shares: DDP's gradient average is the global batch mean
            loss = sample_loss(model, targets, trained, mine)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = rates[step]
            optimizer.step()
            losses[step] = loss.detach() / world
            if step + 1 in check_at:
                best.check(step + 1, model, measure)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    if watch:
        best.restore(encoder)
    losses = losses.cpu()
    all_reduce_sum([losses])
    return losses.tolist()


SCHEDULES = ("constant", "cosine")


def learning_rates(lr: float, steps: int, schedule: str = "constant") -> list[float]:
    """The learning rate of each of ``steps`` steps: ``constant``, ``lr`` throughout; ``cosine``,
    ``lr * (1 + cos(pi * s / steps)) / 2`` at step s = 0 .. steps - 1 (``lr`` first, decaying towards 0:
    the late steps average out the single-sample noise of the early ones)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule}: must be one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return [lr] * steps
    return [lr * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]


def sample_loss(model: nn.Module, targets: TeacherOutputs, encoder: torch.nn.Module | None, idx: Sequence[int]) -> torch.Tensor:
    """Recovery loss of ``model`` on the samples ``idx`` of ``targets``, against their teacher outputs
    (computed on first use). ``encoder`` runs the student's encoder (e.g. DDP-wrapped): a
    :class:`StemTrunk`, fed the cached stem outputs, or a whole encoder, fed the images; ``None``: the
    model's own, from the cached stem outputs when its stem is the teacher's."""
    return _loss_and_logits(model, targets, encoder, idx)[0]


def _loss_and_logits(model: nn.Module, targets: TeacherOutputs, encoder: torch.nn.Module | None,
                     idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    t_emb, t_logits = targets.get(idx)
    box, m = targets.boxes[idx].to(device), targets.masks[idx].to(device)
    encoder = encoder or student_encoder(model, targets)
    from_stem = isinstance(getattr(encoder, "module", encoder), StemTrunk)  # DDP keeps the wrapped one in .module
    emb = encoder(targets.features(idx) if from_stem else targets.images[idx].to(device))
    logits = decode_logits(model, emb, box)
    loss, _ = recovery_loss(logits, t_logits, emb, t_emb, m, input_size(model))
    return loss, logits


@torch.no_grad()
def held_back_check(model: nn.Module, targets: TeacherOutputs) -> dict[str, float]:
    """Dice, Boundary F1 and their mean (``score``, :func:`medcore_tp.monitor.logit_quality`) of
    ``model`` on every sample of ``targets``, and its mean recovery loss there (``loss``, as
    :func:`pool_loss`), from one forward pass per sample (eval mode; the train/eval state is restored)."""
    was = model.training
    model.eval()
    try:
        encoder = student_encoder(model, targets)  # once, not per sample
        pairs = [_loss_and_logits(model, targets, encoder, [i]) for i in range(len(targets))]
    finally:
        model.train(was)
    if not pairs:
        raise ValueError("targets: no sample to measure")
    quality = logit_quality(torch.cat([z for _, z in pairs]), targets.masks)
    return {**quality, "loss": sum(float(loss) for loss, _ in pairs) / len(pairs)}


def hold_back(pool: Sequence[CalibrationBatch], n: int) -> tuple[list[CalibrationBatch], list[CalibrationBatch]]:
    """(training pool, held-back pool): the last ``n`` samples of ``pool`` are held back, unless that
    would leave fewer than ``n`` to train on (then nothing is held back)."""
    total = sum(len(b.images) for b in pool)
    if n <= 0 or total < 2 * n:
        return list(pool), []
    flat = single_samples(pool)
    return flat[: total - n], flat[total - n :]


@torch.no_grad()
def pool_loss(model: nn.Module, targets: TeacherOutputs) -> float:
    """Mean recovery loss of ``model`` over every sample of ``targets`` (a teacher's outputs on a
    pool; build it once to measure the same pool before and after recovery)."""
    encoder = student_encoder(model, targets)
    losses = [float(sample_loss(model, targets, encoder, [i])) for i in range(len(targets))]
    return sum(losses) / max(len(losses), 1)
