"""The exceptions tessera raises. Their message is the line the ``tessera`` command prints
after ``error:`` for the same mistake (flags named as the CLI names them, e.g. ``--window``)."""


class TesseraError(Exception):
    """A tessera operation failed (a file it cannot read or write, memory, a GPU...)."""


class ParameterError(TesseraError, ValueError):
    """An argument, array shape or job parameter is wrong; also a ``ValueError``."""
