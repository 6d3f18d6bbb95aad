"""Benchmarks of morphable. Not collected by pytest; run as ``python -m benchmarks.<name>``.

* :mod:`benchmarks.protocol`: AFLW2000-3D reading and metrics (the reusable core).
* :mod:`benchmarks.aflw2000_3d`: the command-line runner and its method registry.
* :mod:`benchmarks.report`: Markdown tables with published anchors, CED and worst-case plots.
"""
