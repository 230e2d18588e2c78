"""The ``robust_bundles`` command: ``robust_bundles audit BUNDLE ...`` and ``robust_bundles robustify BUNDLE ...``
(also ``python -m robust_bundles ...``)."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

__all__ = ["commands", "main"]


def _command(fn: Callable, done: Callable[[dict], str]) -> Callable:
    """``fn`` as a fire command: its signature and Google-style docstring (what ``--help`` lists: every flag with its
    meaning and default), a one-line result instead of the whole returned dict."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> str:
        return done(fn(*args, **kwargs))

    return run


def commands() -> dict[str, Callable]:
    """The subcommands: ``audit`` and ``robustify``."""
    from .audit import audit
    from .robustify import robustify

    return {"audit": _command(audit, lambda info: f"audit report: {info['files']['audit_md']}"),
            "robustify": _command(robustify, lambda info: f"robust model: {info['model']}")}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    import fire

    from ..errors import explain_errors

    explain_errors()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stdout)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args and any(a in ("--help", "-h") for a in args):  # fire's own form: help, exit status 0
        args = [a for a in args if a not in ("--help", "-h")] + ["--", "--help"]
    fire.Fire(commands(), command=args, name="robust_bundles")


if __name__ == "__main__":  # pragma: no cover
    main()
