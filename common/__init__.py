"""robust-bundles shared library: attacks, losses, margins, thresholds, adversarial training iterations, handlers,
transforms and metrics used by every bundle in ``bundles/``."""

__version__ = "0.1.0"
