"""Files of the results, written whole or not at all, and every OS error on them as one EvalkitError.

An OS error (read-only, disk full, not a directory) names the path and the remedy; what was written
before it stays, and a rerun of the same command resumes from it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import Timeout

from evalkit.types import EvalkitError

_DISK_REMEDIES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "make that file system writable (it is mounted read-only)",
    errno.EACCES: "give this user write permission there",
    errno.EPERM: "give this user write permission there",
    errno.ENOTDIR: "--output-dir and the folders above it must be directories, not files",
    errno.EEXIST: "--output-dir must be a directory, not a file",
}


def disk_error(path: Path, err: OSError) -> EvalkitError:
    """One line for an OS error on the results: what failed, why, what to do; the rerun resumes."""
    remedy = _DISK_REMEDIES.get(err.errno or 0, "fix the cause")
    return EvalkitError(
        f"cannot write the results at {path}: {err.strerror or err} (errno {err.errno}); "
        f"{remedy}, then rerun the same command: it resumes with every question scored "
        "so far"
    )


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """OS errors (read-only, disk full, not a directory) of the block as one EvalkitError naming `path`."""
    try:
        yield
    except Timeout:  # a TimeoutError, so an OSError: the callers say what it means
        raise
    except OSError as err:
        raise disk_error(path, err) from err


def check_output_dir(output_dir: str | Path) -> None:
    """Before the model loads: --output-dir is a directory (made if missing) this process can write to."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise EvalkitError(f"--output-dir {root} is a file, not a directory; pass a directory for the runs")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root) as probe:  # what a run writes first: a small synced file
            probe.write(b"evalkit write check\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        remedy = _DISK_REMEDIES.get(err.errno or 0, "fix the cause")
        raise EvalkitError(
            f"--output-dir {root} cannot hold runs: {err.strerror or err} (errno "
            f"{err.errno}); {remedy}, or pass another --output-dir (an unfinished run resumes "
            "only from its own directory)"
        ) from err


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: temp file in the same directory, fsync, os.replace."""
    tmp = path.with_name(path.name + ".tmp")
    with disk_errors(path):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # gone after os.replace; after a failed write, nothing is left half-written


def read_json(path: Path) -> dict:
    """A JSON object file, or an EvalkitError naming it (unreadable, not JSON, not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvalkitError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise EvalkitError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
