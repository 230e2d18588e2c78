"""Dataset readers: from the layouts users have on disk to datalists of samples with stable ids.

One module per dataset family, split by reason to change (a layout, a file format, a synthetic generator).
"""
