"""Eldercare edge gateway: everything the site learns reaches the city platform exactly once."""

__version__ = "0.1.0"
