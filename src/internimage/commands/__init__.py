"""Command-line glue behind ``internimage <command>``: argument parsing and printing, nothing else.

The layout rule: everything a task *does* lives in a library module that works without the command line:
:mod:`internimage.classification`, :mod:`internimage.detection` and :mod:`internimage.segmentation` (each: its config,
its engine :class:`~internimage.engine.Task`, model building / loading, evaluation, inference and drawing), and
:mod:`internimage.plotting` (figures). A module here turns flags into a config, calls the library and prints; the
library never imports this package (nor :mod:`internimage.cli`).
"""
