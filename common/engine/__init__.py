"""The stage engine shared by the experiment tool (:mod:`robust_bundles.experiment`) and the AMAT calibration study
(:mod:`robust_bundles.study`), one concern per module:

- :mod:`~robust_bundles.engine.inputs`: what a tool reads before planning (the bundle folder, its profile, the
  ``--override`` dict, the data and output folders);
- :mod:`~robust_bundles.engine.plan`: the stages, what is done, and the resume decisions (run, resume or skip);
- :mod:`~robust_bundles.engine.runner`: running a stage (a ``python -m monai.bundle run`` subprocess, or the tool's
  report in process), its log and record, the console's progress;
- :mod:`~robust_bundles.engine.cli`: the command line (option values, errors printed without a traceback, fire).

A tool builds its own stages (its plan), loads its inputs and composes a
:class:`~robust_bundles.engine.runner.Runner`, which calls back the tool for its report stages.
"""
