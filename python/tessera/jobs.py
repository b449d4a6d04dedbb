"""Any job the ``tessera`` command runs from a TOML job file, run in this process (one rank,
no MPI): convert, unstitch/stitch/weed, pyramid, crop, pairs, tokens, patches."""

import json
import os

from . import _log, _tessera


def run(job, *, resume=False, overwrite=False, dry_run=False, threads=None):
    """Run a job, as ``tessera run job.toml`` does, in this process.

    Args:
        job: a dict of a job file's tables, e.g. ``{"pyramid": {"input": "v.zarr", "output":
            "p.zarr", "factor": [2, 2, 2]}, "run": {"overwrite": True}}`` (relative paths
            from the working directory); or the path of a TOML job file (relative paths from
            the file); or a TOML string holding the tables.
        resume, overwrite, dry_run: as ``tessera run --resume/--overwrite/--dry-run``
            (added to the job's own ``[run]`` table).
        threads: the width of this process's thread pool (default: the CLI's). The pool is
            built by the first run and kept: a later run asking for another width raises.

    Returns:
        The run report (a dict: parameters, phases, bytes, throughput), or None when no report
        was written (a dry run).

    Raises:
        ParameterError: a bad job table or parameter (the CLI's message).
        TesseraError: the run failed (the message says how to resume when it left output).
    """
    if isinstance(job, dict):
        kind, text = "json", json.dumps(job)
    elif isinstance(job, os.PathLike) or (isinstance(job, str) and "\n" not in job
                                           and "=" not in job):
        kind, text = "path", os.fspath(job)
    elif isinstance(job, str):
        kind, text = "toml", job
    else:
        raise TypeError(f"job: expected a dict, a path or a TOML string, got "
                        f"{type(job).__name__}")
    _log.sync_level()
    report = _tessera.run(kind, text, bool(resume), bool(overwrite), bool(dry_run), threads)
    if report is None:
        return None
    with open(report, encoding="utf-8") as f:
        return json.load(f)
