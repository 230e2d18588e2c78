"""Readable errors at the end of a failed ``monai.bundle run``: the root cause of an error below MONAI's wrappers,
on one last line (``ERROR (cause): ...``)."""

from __future__ import annotations

__all__ = ["error_line", "explain_errors"]


_WRAPPER_MESSAGES = ("Failed to evaluate", "Failed to instantiate", "applying transform", "Component to instantiate")


def _is_wrapper(exc: BaseException) -> bool:
    """Whether ``exc`` only wraps another error (MONAI's config and transform wrappers)."""
    return isinstance(exc, RuntimeError) and str(exc).lstrip().startswith(_WRAPPER_MESSAGES) and (
        exc.__cause__ is not None or exc.__context__ is not None
    )


def _root_cause(exc: BaseException) -> BaseException:
    """The error that says what went wrong: the outermost exception of the chain that is not a MONAI wrapper.

    MONAI wraps every error raised while a config item is built or a transform runs (``RuntimeError: Failed to
    evaluate ...``, ``applying transform ...``). Below the wrappers sits the error of the code that knew the context
    (e.g. ``ValueError: image /data/x.nii.gz cannot be read ...``), and below that possibly a low-level cause
    (``EOFError: Compressed file ended ...``) that names no file: the middle one is reported.
    """
    seen = set()
    while _is_wrapper(exc) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__  # type: ignore[assignment]
    return exc


#: what :func:`check_versions` found wrong with the installed packages (repeated on the last line of a failed run)
_VERSION_PROBLEMS: list[str] = []


def error_line(cause: BaseException) -> str:
    """``<type>: <message>`` on one line (a multi-line message, e.g. PyTorch's refusal of a pickle, is joined), with
    the installed packages older than the bundle's pins (:func:`check_versions`) named after it: the likely cause
    of an error that follows them."""
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    if _VERSION_PROBLEMS:
        text += " (and: " + "; ".join(_VERSION_PROBLEMS) + ")"
    return text


def explain_errors() -> None:
    """Repeat the root cause of an uncaught error at the very end of the output.

    ``monai.bundle run`` wraps every error raised while a config item is built in ``RuntimeError: Failed to evaluate
    ConfigExpression ...`` / ``Failed to instantiate ...``; the message that says what to fix (a missing file, a wrong
    dataset layout) sits in the middle of a long traceback. Called first by a config's ``run`` (its ``setup`` list), this installs
    a ``sys.excepthook`` that prints the usual traceback and then one line ``ERROR (cause): <type>: <message>``
    (:func:`error_line`).
    Installed once; other exceptions and the previous hook are left as they were.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_robust_bundles_explain", False):
        return

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if exc is None:
            return
        cause = _root_cause(exc)
        if not isinstance(cause, KeyboardInterrupt):
            sys.stdout.flush()
            sys.stderr.write(f"\nERROR (cause): {error_line(cause)}\n")
            sys.stderr.flush()

    hook._robust_bundles_explain = True  # type: ignore[attr-defined]
    sys.excepthook = hook
