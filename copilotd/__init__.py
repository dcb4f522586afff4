"""copilotd: a local daemon that keeps chat sessions with language models safe."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("copilotd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
