"""medcore-tp: boundary-preserving structured pruning of MedSAM-style encoders with Torch-Pruning."""

from medcore_tp.checkpoint import load_model, load_pruned, save_pruned
from medcore_tp.errors import MedcoreError
from medcore_tp.graph import BlockPlan, PruningSpec, apply_plan, build_graph, prepare_pruning
from medcore_tp.importance import BoundaryFisherImportance, MedCoreImportance
from medcore_tp.models import MODEL_NAMES, build_model

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES",
    "BlockPlan",
    "BoundaryFisherImportance",
    "MedCoreImportance",
    "MedcoreError",
    "PruningSpec",
    "apply_plan",
    "build_graph",
    "build_model",
    "load_model",
    "load_pruned",
    "prepare_pruning",
    "save_pruned",
]
