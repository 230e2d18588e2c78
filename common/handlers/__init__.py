"""Ignite handlers in MONAI style: margin bookkeeping, threshold estimation, robustness evaluation, task metrics,
model loading, checkpoints that survive a crash, and the validation's confidence reference."""

from .checkpoint_saver import AtomicCheckpointSaver, KeepLatestCheckpoints
from .confidence_reference import ConfidenceReferenceSaver
from .finite_loss_guard import FiniteLossGuard
from .init_from_checkpoint import InitFromCheckpoint
from .margin_handler import MarginHandler
from .model_loader import ModelLoader
from .pass_counter import PassCounter
from .progress_handler import ProgressHandler
from .robustness_handler import RobustnessEvaluationHandler
from .task_metric import TaskIgniteMetric
from .threshold_handler import ThresholdEstimationHandler

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
    "PassCounter",
    "ConfidenceReferenceSaver",
]
