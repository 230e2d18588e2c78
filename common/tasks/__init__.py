"""Task adapters: what one kind of task (detection, ...) plugs into the task-general core.

A task adapter is a small set of components a bundle config wires into a stock MONAI ``SupervisedTrainer`` /
``SupervisedEvaluator`` and into the core's attacks, thresholds and adversarial iterations, without the core knowing
the task:

- a per-sample, per-term loss (:class:`robust_bundles.losses.PerSampleLoss` interface),
- the batch layout (a collate function and a ``prepare_batch``) when samples do not stack into tensors,
- a metric accumulator with a direction (``specs``, ``reset``, ``update``, ``aggregate``),
- decoding and inference helpers.

Subpackages are imported on demand, so a task's optional dependencies are only needed by the bundles that use it:

- :mod:`robust_bundles.tasks.detection`: 2D object detection with MONAI's RetinaNet (needs ``torchvision``, the
  ``detection`` extra).
"""
