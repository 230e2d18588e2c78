"""Ignite handlers in MONAI style: margin bookkeeping, threshold estimation, robustness evaluation, task metrics."""

from .margin_handler import MarginHandler
from .threshold_handler import ThresholdEstimationHandler
from .robustness_handler import RobustnessEvaluationHandler
from .progress_handler import ProgressHandler
from .finite_loss_guard import FiniteLossGuard
from .task_metric import TaskIgniteMetric
