"""The release, in one leaf module that any layer may read (a User-Agent names it)."""

__version__ = "0.1.0"
