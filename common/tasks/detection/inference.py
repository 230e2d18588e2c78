"""Inference: an image file in, boxes with class and score out (JSON) and an overlay PNG.

:func:`detect` runs the network on one image preprocessed as in training (:func:`detection_preprocessing`) and decodes
with the detector's post-processing; boxes come back in the pixels of the *original* image, VOC convention
``[xmin, ymin, xmax, ymax]`` (x along columns, y along rows). :func:`write_detections` writes the JSON and
:func:`draw_overlay` the PNG; :func:`run_inference` does all three for a list of files (what a bundle's
``inference.json`` calls).

JSON layout::

    {"image": "<path>", "image_size": [width, height], "network_input_size": [X, Y], "classes": [...],
     "score_threshold": 0.05, "detections": [{"box": [xmin, ymin, xmax, ymax], "label": 0, "class": "RBC",
     "score": 0.93}, ...]}

Detections are sorted by decreasing score.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose

from ...attacks import preserve_model_state
from ...confidence import ConfidenceReport, Measure
from ...io import atomic_write, atomic_write_text
from .heads import RetinaNetHeads
from .transforms import boxes_to_original, detection_preprocessing

__all__ = [
    "detect",
    "detection_result",
    "write_detections",
    "draw_overlay",
    "run_inference",
    "image_files",
    "DetectionWriter",
    "DETECTION_MEASURES",
    "DetectionConfidence",
    "CLASS_COLOURS",
    "IMAGE_SUFFIXES",
]

#: Outline colours (RGB) of the classes in the overlay, by label; repeated when there are more classes.
CLASS_COLOURS = ((220, 30, 30), (30, 90, 230), (20, 160, 60), (230, 150, 0), (150, 40, 180))


#: File name endings that :func:`image_files` takes from a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def image_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The image files of an inference run: every image in a folder (sorted; ``._`` files skipped) or a list of paths.

    Raises:
        FileNotFoundError: the folder or a listed file does not exist, or the folder holds no image.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"The input folder {folder} does not exist: set --input_dir to a folder of images "
                                    f"({', '.join(IMAGE_SUFFIXES)}) or give --datalist \"['path/to/image.jpg']\".")
        files = sorted(str(p) for p in folder.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._") and p.is_file())
        if not files:
            raise FileNotFoundError(f"The input folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}): set "
                                    "--input_dir to a folder of images, or give --datalist.")
        return files
    missing = [str(f) for f in source if not Path(f).is_file()]
    if missing or not source:
        raise FileNotFoundError(f"Input images {missing or '(none)'} do not exist: fix the paths in --datalist.")
    return [str(f) for f in source]


def detect(
    network: torch.nn.Module,
    detector: Any,
    image_path: str | os.PathLike,
    image_size: Sequence[int],
    classes: Sequence[str],
    device: str | torch.device = "cpu",
    score_threshold: float | None = None,
) -> dict:
    """Detect objects in one image file.

    Args:
        network: the trained ``detector.network`` (run in eval mode; its mode is restored).
        detector: the ``RetinaNetDetector`` whose post-processing decodes the output.
        image_path: a 2D RGB image (JPEG, PNG).
        image_size: network input size (X, Y) used in training.
        classes: class names in label order.
        device: where to run.
        score_threshold: keep detections with at least this score (None: the detector's box selector threshold).

    Returns:
        The JSON-ready dict of the module docstring.
    """
    path = Path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"Image {path} does not exist.")
    sample = Compose(detection_preprocessing(image_size, with_boxes=False))({"image": str(path)})
    x = sample["image"].unsqueeze(0).to(device)
    heads = RetinaNetHeads(detector, image_size)
    with preserve_model_state(network, train=False), torch.no_grad():
        pred = heads.decode(network(x))[0]
    return detection_result(pred, detector, path, image_size, sample["original_size"], classes, score_threshold)


def detection_result(
    pred: Mapping[str, Any],
    detector: Any,
    image_path: str | os.PathLike,
    image_size: Sequence[int],
    original_size: Sequence[int],
    classes: Sequence[str],
    score_threshold: float | None = None,
) -> dict:
    """The JSON-ready dict of the module docstring for one image's decoded detections.

    Args:
        pred: one image's decoded detections (:meth:`RetinaNetHeads.decode`): boxes in network-input pixels, labels,
            scores.
        detector: the ``RetinaNetDetector`` (its keys and box-selector threshold).
        image_path: the image file.
        image_size: network input size (X, Y).
        original_size: the image's size (width, height) before resizing.
        classes: class names in label order.
        score_threshold: keep detections with at least this score (None: the detector's box selector threshold).
    """
    original = [int(v) for v in original_size]
    boxes = boxes_to_original(pred[detector.target_box_key].detach().cpu(), image_size, original)
    scores = pred[detector.pred_score_key].detach().cpu().float()
    labels = pred[detector.target_label_key].detach().cpu().long()
    threshold = float(detector.box_selector.score_thresh if score_threshold is None else score_threshold)
    order = torch.argsort(scores, descending=True)
    detections = [
        {
            "box": [round(float(v), 2) for v in boxes[i]],
            "label": int(labels[i]),
            "class": str(classes[int(labels[i])]) if int(labels[i]) < len(classes) else str(int(labels[i])),
            "score": round(float(scores[i]), 4),
        }
        for i in order.tolist()
        if float(scores[i]) >= threshold
    ]
    return {
        "image": str(image_path),
        "image_size": original,
        "network_input_size": [int(v) for v in image_size],
        "classes": [str(c) for c in classes],
        "score_threshold": threshold,
        "detections": detections,
    }


def write_detections(result: dict, path: str | os.PathLike) -> Path:
    """Write :func:`detect`'s result as JSON (atomically)."""
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def draw_overlay(result: dict, path: str | os.PathLike, min_score: float = 0.3, line_width: int = 2) -> Path:
    """Draw the detections on the original image and save a PNG (atomically).

    Args:
        result: :func:`detect`'s dict (its ``image`` is read again).
        path: the PNG to write.
        min_score: draw only detections with at least this score (the JSON keeps all).
        line_width: outline width in pixels.
    """
    from PIL import Image, ImageDraw

    with Image.open(result["image"]) as im:
        canvas = im.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for d in result["detections"]:
        if d["score"] < min_score:
            continue
        colour = CLASS_COLOURS[d["label"] % len(CLASS_COLOURS)]
        x0, y0, x1, y1 = d["box"]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line_width)
        draw.text((x0 + 2, y0 + 1), f"{d['class']} {d['score']:.2f}", fill=colour)
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def run_inference(
    files: Sequence[str | os.PathLike],
    network: torch.nn.Module,
    detector: Any,
    image_size: Sequence[int],
    classes: Sequence[str],
    output_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    min_overlay_score: float = 0.3,
) -> list[Path]:
    """Detect objects in every file; write ``<stem>.json`` and ``<stem>_overlay.png`` into ``output_dir``.

    Returns:
        The JSON paths, in the order of ``files``.
    """
    if not files:
        raise ValueError("No image files given to run_inference.")
    out = Path(output_dir)
    written = []
    for f in files:
        result = detect(network, detector, f, image_size, classes, device)
        stem = Path(f).stem
        written.append(write_detections(result, out / f"{stem}.json"))
        draw_overlay(result, out / f"{stem}_overlay.png", min_score=min_overlay_score)
    return written


DETECTION_MEASURES = (
    Measure("max_score", "the highest box score of the image (each box's score, in <stem>.json, is its confidence)"),
    Measure("boxes", "the number of boxes with a score at least the score threshold", "size"),
)
"""The detection family's per-image confidence measures (:mod:`robust_bundles.confidence`)."""

DETECTION_NOTE = ("Every detection's score (detections[].score in <stem>.json, in [0, 1]) is its confidence: threshold "
                  "it; max_score and boxes summarise the image.")


class DetectionConfidence:
    """The per-image confidence measures (``DETECTION_MEASURES``) of a detection result or of a batch of outputs.

    Args:
        detector: the ``RetinaNetDetector`` (its post-processing decodes raw outputs).
        image_size: network input size (X, Y).
        score_threshold: boxes of at least this score are counted (None: the detector's threshold).
    """

    measures = DETECTION_MEASURES

    def __init__(self, detector: Any, image_size: Sequence[int], score_threshold: float | None = None) -> None:
        self.heads = RetinaNetHeads(detector, image_size)
        self.threshold = float(detector.box_selector.score_thresh if score_threshold is None else score_threshold)

    @staticmethod
    def of_result(result: Mapping[str, Any]) -> dict[str, float]:
        """The measures of one :func:`detection_result`."""
        scores = [d["score"] for d in result["detections"]]
        return {"max_score": max(scores, default=0.0), "boxes": float(len(scores))}

    def __call__(self, pred: Any, batch: Any = None) -> dict[str, torch.Tensor]:
        """Per image ``{"max_score": (B,), "boxes": (B,)}`` from raw outputs."""
        out: dict[str, list[float]] = {"max_score": [], "boxes": []}
        for det in self.heads.decode(pred):
            scores = det[self.heads.detector.pred_score_key].detach().float().cpu()
            kept = scores[scores >= self.threshold]
            out["max_score"].append(float(kept.max()) if kept.numel() else 0.0)
            out["boxes"].append(float(kept.numel()))
        return {k: torch.tensor(v) for k, v in out.items()}


class DetectionWriter:
    """Ignite handler of an inference evaluator: per image ``<stem>.json`` (:func:`detection_result`) and
    ``<stem>_overlay.png`` (:func:`draw_overlay`) in ``output_dir``.

    The evaluator runs ``detector.network`` on batches of :func:`detection_preprocessing` samples (``with_boxes=False``)
    with ``decollate=False``; this handler decodes the raw outputs with the detector's post-processing and maps the
    boxes back to each image's original size.

    Args:
        detector: the ``RetinaNetDetector`` whose post-processing decodes the outputs.
        classes: class names in label order.
        output_dir: where the files go (created).
        image_size: network input size (X, Y).
        score_threshold: keep detections with at least this score in the JSON (None: the detector's threshold).
        min_overlay_score: outline only detections with at least this score in the overlay.
        path_key: batch key of the image file paths.
        size_key: batch key of the original sizes (:class:`ResizeBoxd` writes it).
        confidence: the run's :class:`robust_bundles.confidence.ConfidenceReport`: per image
            ``<stem>_confidence.json`` (:class:`DetectionConfidence`).
    """

    def __init__(
        self,
        detector: Any,
        classes: Sequence[str],
        output_dir: str | os.PathLike,
        image_size: Sequence[int],
        score_threshold: float | None = None,
        min_overlay_score: float = 0.3,
        path_key: str = "image_path",
        size_key: str = "original_size",
        confidence: ConfidenceReport | None = None,
    ) -> None:
        self.heads = RetinaNetHeads(detector, image_size)
        self.classes = tuple(str(c) for c in classes)
        self.output_dir = Path(output_dir)
        self.image_size = tuple(int(v) for v in image_size)
        self.score_threshold, self.min_overlay_score = score_threshold, float(min_overlay_score)
        self.path_key, self.size_key = path_key, size_key
        self.confidence = confidence
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from ...engine_io import engine_pred_and_batch

        pred, batch = engine_pred_and_batch(engine)
        missing = [k for k in (self.path_key, self.size_key) if k not in batch]
        if missing:
            raise KeyError(f"DetectionWriter needs {missing} in the batch (it has {sorted(batch)}): keep the image path "
                           f"under {self.path_key!r} in the datalist and resize with ResizeBoxd.")
        sizes = torch.as_tensor(batch[self.size_key]).reshape(-1, 2).tolist()
        for b, det in enumerate(self.heads.decode(pred)):
            path = batch[self.path_key][b]
            result = detection_result(det, self.heads.detector, path, self.image_size, sizes[b], self.classes,
                                      self.score_threshold)
            stem = Path(path).stem
            self.written.append(write_detections(result, self.output_dir / f"{stem}.json"))
            draw_overlay(result, self.output_dir / f"{stem}_overlay.png", min_score=self.min_overlay_score)
            if self.confidence is not None:
                self.written.append(self.confidence.add(path, DetectionConfidence.of_result(result),
                                                        {"note": DETECTION_NOTE}))
