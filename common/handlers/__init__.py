"""Ignite handlers in MONAI style: margin bookkeeping, threshold estimation, robustness evaluation, task metrics,
model loading, checkpoints that survive a crash, and the validation's confidence reference."""

from .margin_handler import MarginHandler
from .threshold_handler import ThresholdEstimationHandler
from .robustness_handler import RobustnessEvaluationHandler
from .progress_handler import ProgressHandler
from .finite_loss_guard import FiniteLossGuard
from .init_from_checkpoint import InitFromCheckpoint
from .task_metric import TaskIgniteMetric
from .model_loader import ModelLoader
from .checkpoint_saver import AtomicCheckpointSaver, KeepLatestCheckpoints
from .confidence_reference import ConfidenceReferenceSaver

__all__ = [
    "MarginHandler",
    "ThresholdEstimationHandler",
    "RobustnessEvaluationHandler",
    "ProgressHandler",
    "FiniteLossGuard",
    "ModelLoader",
    "AtomicCheckpointSaver",
    "KeepLatestCheckpoints",
    "InitFromCheckpoint",
    "TaskIgniteMetric",
    "ConfidenceReferenceSaver",
]
