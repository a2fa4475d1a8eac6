"""The importance registry: every importance a pruning run can use, by name, and what it needs.

``needs`` says what must happen before the importance can score groups:

- ``"nothing"``: data-free (``magnitude``: L2 norm of the group's weights; ``random``);
- ``"gradients"``: ``.grad`` of the encoder filled on the calibration images (``taylor``: |w * dL/dw|);
- ``"fisher"``: the boundary-aware Fisher of the calibration images (``medcore``: Q from Dzero,
  Dreset and alpha; ``medcore-grad``: the same with the first-order term; ``boundary-fisher``: Dzero
  alone). These also give the per-block sensitivities that weight the budget (1 / s_b).
- ``"refit"``: the input moments of every attention projection and MLP output layer on the
  calibration images (``refit``: the greedy refit-aware removal order, :mod:`medcore_tp.refit_importance`).

The CLI's ``--importance`` choices, the pruning pipeline and the sweeps all read this table, so a
new importance is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch_pruning as tp

from medcore_tp.errors import MedcoreError

NEEDS = ("nothing", "gradients", "fisher", "refit")


@dataclass(frozen=True)
class ImportanceEntry:
    """One registered importance. ``build`` makes the Torch-Pruning importance for the data-free and
    gradient kinds; Fisher-based ones are built from calibration statistics
    (:func:`medcore_tp.recipe.make_medcore_importance` with ``kind=name``)."""

    name: str
    needs: str
    description: str
    build: Callable[[], tp.importance.Importance] | None = None

    @property
    def needs_calibration(self) -> bool:
        """Whether calibration images must be run through the model before scoring."""
        return self.needs != "nothing"


IMPORTANCES: dict[str, ImportanceEntry] = {
    e.name: e
    for e in (
        ImportanceEntry("medcore", "fisher", "MedCore's Q: alpha Dzero + (1 - alpha) Dreset (boundary-aware Fisher)"),
        ImportanceEntry("medcore-grad", "fisher", "MedCore's Q with the first-order term the paper drops: "
                        "g.dtheta added to Dzero and Dreset (g the mean calibration gradient; beyond the paper)"),
        ImportanceEntry("boundary-fisher", "fisher", "Dzero alone: the boundary-aware Fisher cost of zeroing a group"),
        ImportanceEntry("refit", "refit", "what removing a group costs after the least-squares refit "
                        "(structured optimal brain surgeon on the calibration tokens)"),
        ImportanceEntry("magnitude", "nothing", "L2 norm of the group's weights (Torch-Pruning)",
                        lambda: tp.importance.GroupMagnitudeImportance(p=2)),
        ImportanceEntry("taylor", "gradients", "|w * dL/dw| on the calibration images (Torch-Pruning)",
                        tp.importance.GroupTaylorImportance),
        ImportanceEntry("random", "nothing", "random scores (Torch-Pruning), a baseline", tp.importance.RandomImportance),
    )
}
IMPORTANCE_NAMES: tuple[str, ...] = tuple(IMPORTANCES)
FISHER_IMPORTANCES: tuple[str, ...] = tuple(n for n, e in IMPORTANCES.items() if e.needs == "fisher")
CALIBRATED_IMPORTANCES: tuple[str, ...] = tuple(n for n, e in IMPORTANCES.items() if e.needs_calibration)


def importance_entry(name: str) -> ImportanceEntry:
    """The entry of ``name``; an unknown name raises naming the ``importance`` parameter."""
    try:
        return IMPORTANCES[name]
    except KeyError:
        raise MedcoreError(f"importance {name}: unknown, choose one of {', '.join(IMPORTANCE_NAMES)}",
                           "importance") from None


__all__ = ["CALIBRATED_IMPORTANCES", "FISHER_IMPORTANCES", "IMPORTANCES", "IMPORTANCE_NAMES", "NEEDS",
           "ImportanceEntry", "importance_entry"]
