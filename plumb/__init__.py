"""plumb: personal alignment from the terminal."""

from plumb.core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
