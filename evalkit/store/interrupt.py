"""Ctrl-C said in one line: what is saved, and that the same command resumes (exit 130, no traceback).

A KeyboardInterrupt can land anywhere (in a forward, in the fsync of the questions file); the data side
already holds (every batch is appended durably, run.json is written last and atomically), so what the user
needs is where things stand. Each layer that knows something turns the KeyboardInterrupt into an
`Interrupted` carrying its message (run_task through `reraise_while_scoring`, the sweep and bench through
the context managers `between_runs` and `measuring`); the innermost one wins (a run being scored names its
questions; the sweep, between runs, names the runs finished). The CLI's `main()` prints it with
`report_interrupt` and returns 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from evalkit.store.question_check import BadRecord, check_record

RESUME = "rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C with the one line that says what it stopped (a KeyboardInterrupt still: nothing catches
    it by mistake)."""


def _hold_further_interrupts() -> None:
    """A second Ctrl-C while the message is made would print a traceback after all: ignored from now on
    (the process is ending)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def saved_questions(run_path: Path) -> int:
    """Distinct questions with a valid line in a run directory's questions files (shards included), read
    without repairing anything (the lock holder repairs them on the rerun)."""
    ids: set[str] = set()
    for path in sorted(run_path.glob("questions*.jsonl")):
        try:
            lines = path.read_bytes().split(b"\n")[:-1]  # the last piece is empty or a torn write
        except OSError:
            continue
        for line in lines:
            try:
                ids.add(check_record(json.loads(line.decode("utf-8"))).id)
            except (UnicodeDecodeError, json.JSONDecodeError, BadRecord):
                continue
    return len(ids)


def interrupted_message(run_path: Path, total: int) -> str:
    """The line for a Ctrl-C while a run directory is scored."""
    return f"interrupted: {saved_questions(run_path)} of {total} questions are saved in {run_path}; {RESUME}"


def reraise_while_scoring(err: KeyboardInterrupt, run_path: Path, total: int) -> NoReturn:
    """A Ctrl-C while one run directory of `total` questions is scored, raised again saying how many are
    saved (an `except KeyboardInterrupt` clause calls it, so the scoring loop keeps its shape)."""
    if isinstance(err, Interrupted):
        raise err
    _hold_further_interrupts()
    raise Interrupted(interrupted_message(run_path, total)) from err


@dataclasses.dataclass
class SweepProgress:
    """Where a sweep (tasks x precisions) stands, kept up to date by the sweep, read on a Ctrl-C."""

    planned: int  # runs this command makes (tasks x precisions)
    # the run directories whose run.json is written, in order
    finished: list[Path] = dataclasses.field(default_factory=list)
    doing: str = "while checking the data"  # what is under way outside any run's scoring


@contextlib.contextmanager
def between_runs(progress: SweepProgress) -> Iterator[None]:
    """Around a sweep: a Ctrl-C outside any run's scoring (loading a model, preparing prompts) names the
    runs finished so far; one inside a run's scoring keeps that run's line."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as err:
        _hold_further_interrupts()
        done = progress.finished
        last = f" (the last in {done[-1]})" if done else ""
        finished = f"{len(done)} of {progress.planned} runs are finished{last}"
        raise Interrupted(f"interrupted {progress.doing}: {finished}; {RESUME}") from err


@contextlib.contextmanager
def measuring(measured: Sequence[object] | None, planned: int) -> Iterator[None]:
    """Around `bench`: its table and files are written once every variant is measured, so a Ctrl-C keeps
    nothing; the line says how far it got (`measured`: the variants done so far, None where not counted)."""
    try:
        yield
    except Interrupted:  # an inner block already said how far it got
        raise
    except KeyboardInterrupt as err:
        _hold_further_interrupts()
        so_far = "" if measured is None else f" after {len(measured)} of {planned} model x precision variants"
        raise Interrupted(
            f"interrupted: bench stopped{so_far}; its table and files are written only once every variant is "
            "measured, so nothing was written: rerun the same command to measure again"
        ) from err


def report_interrupt(err: KeyboardInterrupt) -> int:
    """What the CLI does with a Ctrl-C: one line on stderr, exit status 130 (128 + SIGINT), no traceback."""
    _hold_further_interrupts()
    message = (
        str(err) if isinstance(err, Interrupted) else "interrupted; rerun the same command to start again"
    )
    print(message, file=sys.stderr)
    return 130
