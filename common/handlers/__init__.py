"""Ignite handlers in MONAI style: margin bookkeeping, threshold estimation, robustness evaluation, task metrics,
model loading and checkpoints that survive a crash."""

from .margin_handler import MarginHandler
from .threshold_handler import ThresholdEstimationHandler
from .robustness_handler import RobustnessEvaluationHandler
from .progress_handler import ProgressHandler
from .finite_loss_guard import FiniteLossGuard
from .init_from_checkpoint import InitFromCheckpoint
from .task_metric import TaskIgniteMetric
from .model_loader import ModelLoader
from .checkpoint_saver import AtomicCheckpointSaver, KeepLatestCheckpoints
from .pass_counter import PassCounter

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
]
