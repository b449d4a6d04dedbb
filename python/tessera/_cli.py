"""The ``tessera`` command installed with the package: the same command line as the binary,
run in this Python process (one process, no MPI)."""

import signal
import sys

from . import _tessera


def main(argv=None):
    """Run the tessera command line (``argv`` without the program name; default
    ``sys.argv[1:]``) and exit with its code."""
    # As the binary: a closed pipe ends quietly, Ctrl-C stops at once.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    args = sys.argv[1:] if argv is None else list(argv)
    sys.exit(_tessera.main(["tessera", *args]))
