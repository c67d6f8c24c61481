"""The project's benchmark scripts and the generated-data benchmark (:mod:`benchmarks.synthetic`).

Not part of the installed package: ``pip install .`` ships only ``ovdet_plugin``. Scripts that
import :mod:`benchmarks.synthetic` (``tools/run_synthetic_benchmark.py`` and some scripts here)
put the repository root on ``sys.path`` first.
"""
