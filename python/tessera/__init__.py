"""tessera from Python: quilting on in-memory arrays (numpy or CPU torch), any tessera job
run in-process, and the ``tessera`` command.

- ``NCYXQuilt`` / ``NCZYXQuilt``: qlty's quilts (``unstitch``, ``stitch``, ``border_tensor``,
  ``get_times``), the bytes of ``tessera quilt unstitch/stitch``;
- ``crop(patterns)``: diffraction patterns in memory cropped as ``tessera crop`` crops them,
  returning the cropped array and the cropping guide's results dict;
- ``hdr.merge(exposures, times, response)``: a bracket in memory merged as ``tessera hdr
  merge`` merges it (Debevec radiance, or Mertens fusion); ``hdr.load``, ``hdr.read_response``;
- ``run(job)``: a TOML job table (dict, TOML text or file) run in this process, one rank;
- ``main(argv)``: the command line in this process (also installed as ``tessera``);
- ``TesseraError`` / ``ParameterError``: failures, carrying the CLI's error line.

Log lines (progress, warnings) go to the ``logging`` logger ``"tessera"``. MPI, multi-rank
runs and the GPU kernels (unless the package was built with ``-F cuda``) are the CLI's.
"""

from ._errors import ParameterError, TesseraError
from ._tessera import __version__
from ._tessera import cuda as _cuda
from . import hdr
from .crop import crop
from .jobs import run
from .quilt import NCYXQuilt, NCZYXQuilt


def main(argv=None):
    """Run the tessera command line in this process and exit with its code; ``argv`` without
    the program name (default ``sys.argv[1:]``)."""
    from ._cli import main as cli_main

    cli_main(argv)


def default_threads():
    """The threads a call uses when not told: ``RAYON_NUM_THREADS``, else the CPUs this
    process may run on (the CLI's default for one process)."""
    from ._tessera import default_threads as threads

    return threads()


__all__ = ["NCYXQuilt", "NCZYXQuilt", "crop", "hdr", "run", "main", "default_threads", "TesseraError",
           "ParameterError", "__version__"]
