"""Progress and warnings through Python's ``logging``: tessera's log lines are records of the
``"tessera"`` logger. Its effective level (``logging.getLogger("tessera").setLevel(...)``, or
the root logger's) is read before each call, so lines below it cost nothing."""

import logging

from . import _tessera

logger = logging.getLogger("tessera")


def sync_level():
    """Passes the ``tessera`` logger's effective level to the compiled module."""
    _tessera.set_log_level(logger.getEffectiveLevel())
