"""vitprune: hardware-aware pruning search for Vision Transformers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vitprune")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
