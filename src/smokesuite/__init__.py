"""The smoke suite's helpers: report writing, build-info loading, the all-reduce harness, ``doctor``.

The pytest suite itself lives in ``smoke_tests/`` (``/opt/smoke_tests`` in the image); ``smoke``
(:mod:`smokesuite.runner`) runs it and writes the JSON report the release gate reads.
"""

__all__ = ["__version__"]
__version__ = "1"
