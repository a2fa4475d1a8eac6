"""medcore-tp: boundary-preserving structured pruning of MedSAM-style encoders with Torch-Pruning."""

from medcore_tp.checkpoint import load_model, load_pruned, save_pruned
from medcore_tp.conv_bn_fold import fold_conv_bn
from medcore_tp.errors import MedcoreError
from medcore_tp.graph import BlockPlan, PruningSpec, apply_plan, build_graph, prepare_pruning
from medcore_tp.importance import BoundaryFisherImportance, FirstOrderMedCoreImportance, MedCoreImportance
from medcore_tp.models import MODEL_NAMES, MODELS, InputSpec, build_model, default_weights, input_spec

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "BlockPlan",
    "BoundaryFisherImportance",
    "FirstOrderMedCoreImportance",
    "InputSpec",
    "MedCoreImportance",
    "MedcoreError",
    "PruningSpec",
    "apply_plan",
    "build_graph",
    "build_model",
    "default_weights",
    "fold_conv_bn",
    "input_spec",
    "load_model",
    "load_pruned",
    "prepare_pruning",
    "save_pruned",
]
