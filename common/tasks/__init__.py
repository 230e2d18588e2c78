"""Task adapters: what one kind of task adds to the shared core (targets, decoding, per-sample loss terms, metrics).

Each module is a small adapter plugged in by a bundle's config; none edits another task or the core. An adapter is a
small set of components a bundle config wires into a stock MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` and
into the core's attacks, thresholds and adversarial iterations:

- a per-sample, per-term loss (:class:`robust_bundles.losses.PerSampleLoss` interface),
- the batch layout (a collate function and a ``prepare_batch``) when samples do not stack into tensors,
- a metric accumulator with a direction (:mod:`robust_bundles.metrics`),
- decoding and inference helpers.

In the bundles' shared base configs (``robust_bundles/configs/segmentation/``) a task fills these ids, each used
by every engine and dataloader that needs it: ``loss``, ``metric``, ``network_def``, ``samples`` (the reader: samples
with a stable ``sample_id``, splits), ``sample_preprocessing``, ``sample_digest``, ``collate_fn``, ``prepare_batch``,
``decollate`` and ``loss_output`` (MONAI's defaults in the base), plus its key metrics and inference writer.

The adapters: :mod:`robust_bundles.tasks.segmentation` (2D slices of 3D MRI, Dice + CE, slice Dice),
:mod:`robust_bundles.tasks.landmarks` (heatmap + offset heads, MRE/SDR in mm) and :mod:`robust_bundles.tasks.detection`
(RetinaNet, COCO mAP).

Subpackages are imported on demand, so a task's optional dependencies are only needed by the bundles that use it:
:mod:`robust_bundles.tasks.detection` (2D object detection with MONAI's RetinaNet) needs ``torchvision``, the
``detection`` extra.
"""
