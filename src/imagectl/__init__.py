"""imagectl: host-side tooling for the pytorch-cuda images (matrix, bake plan, build, smoke, push)."""

__version__ = "0.1.0"
