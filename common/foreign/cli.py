"""The ``robust_bundles`` command: ``robust_bundles audit BUNDLE ...`` and ``robust_bundles robustify BUNDLE ...``
(also ``python -m robust_bundles ...``)."""

from __future__ import annotations

import logging
import sys

__all__ = ["main"]


def _audit(bundle_dir: str, **kwargs):
    from .audit import audit

    info = audit(bundle_dir, **kwargs)
    return f"audit report: {info['files']['audit_md']}"


def _robustify(bundle_dir: str, **kwargs):
    from .robustify import robustify

    info = robustify(bundle_dir, **kwargs)
    return f"robust model: {info['model']}"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    import fire

    from ..errors import explain_errors

    explain_errors()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stdout)
    fire.Fire({"audit": _audit, "robustify": _robustify}, command=argv, name="robust_bundles")


if __name__ == "__main__":  # pragma: no cover
    main()
