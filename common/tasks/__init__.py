"""Task adapters: what one kind of task adds to the shared core (targets, decoding, per-sample loss terms, metrics).

Each module is a small adapter plugged in by a bundle's config; none edits another task or the core.
"""
