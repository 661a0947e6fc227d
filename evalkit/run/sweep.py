"""One model over tasks and precisions: every input checked up front, then per precision: load once, run
every task on it, free it before the next (the `eval` and `sweep` commands).

The tasks come from the caller (evalkit does not import tasks/); `--subjects` names are routed to them here.
With `--backend vllm` each precision starts one vLLM engine (evalkit.backends.vllm.loader.load_for_run); a
GGUF file is dequantized once, into a temporary directory, for all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.store.interrupt import SweepProgress, between_runs
from evalkit.store.records import ReportRun
from evalkit.types import EvalkitError, RunConfig, Task, unknown

if TYPE_CHECKING:
    from evalkit.models.loading import LoadedModel
    from evalkit.types import SubjectData

log = logging.getLogger("evalkit")


def subjects_by_task(
    tasks: Sequence[Task], subjects: Sequence[str] | None
) -> dict[str, tuple[str, ...] | None]:
    """Assign `--subjects` names ("law" or "ceval/law") to the selected tasks that have them; a task given
    none of them is left out (None: every subject of every task)."""
    if not subjects:
        return {task.name: None for task in tasks}
    chosen: dict[str, list[str]] = {task.name: [] for task in tasks}
    for item in subjects:
        task_name, _, subject = item.rpartition("/")
        owners = [
            task.name
            for task in tasks
            if (not task_name or task.name == task_name) and subject in {s.name for s in task.subjects}
        ]
        if not owners:
            named = [task for task in tasks if task.name == task_name] or tasks
            known = sorted({s.name for task in named for s in task.subjects})
            raise unknown(f"{'/'.join(task.name for task in named)} subject", subject, known)
        for owner in owners:
            chosen[owner].append(subject)
    return {name: tuple(names) for name, names in chosen.items() if names}


def task_config(
    task: Task, config: RunConfig, subjects: tuple[str, ...] | None, scheme_shots: bool
) -> RunConfig:
    """One task's config: its subjects, its scheme's shot count where --shots was not given, and the hash
    of the declaration a user task came from (--task-file)."""
    if config.scheme not in task.schemes:
        raise unknown(f"{task.name} scheme", config.scheme, task.schemes)
    scheme = task.schemes[config.scheme]
    if config.max_length is not None and scheme.length_policy not in ("drop_last", "drop_longest"):
        raise EvalkitError(
            f"--max-length sets the limit of schemes that drop shots to fit it; {task.name} "
            f"{scheme.name} has length policy {scheme.length_policy!r} (its prompts are cut at the "
            "model's context, if at all): leave --max-length out for it"
        )
    shots = scheme.shots if scheme_shots else config.shots
    return dataclasses.replace(
        config, task=task.name, subjects=subjects, shots=shots, task_file_hash=task.declaration_hash or None
    )


def run_sweep(
    tasks: Sequence[Task],
    config: RunConfig,
    precisions: Sequence[str],
    subjects: Sequence[str] | None = None,
    device_map: str | None = None,
    scheme_shots: bool = False,
) -> list[ReportRun]:
    """Validate all data and precisions up front, then per precision: load once, run every task, free.

    `config` holds the settings shared by every run (its task, subjects and precision are set here);
    the model source, the device and the backend are resolved here, once, and handed down.
    `scheme_shots`: --shots was not given, each task takes its scheme's count (5 for the CSV benchmarks,
    so their hashes stay). The runs come back in order (main process only: the others return none).
    """
    by_name = {task.name: task for task in tasks}
    routed = subjects_by_task(tasks, subjects)
    progress = SweepProgress(planned=len(routed) * len(precisions))
    with between_runs(progress):  # a Ctrl-C between runs names those finished
        return _sweep(by_name, routed, config, precisions, device_map, progress, scheme_shots)


def _sweep(
    by_name: dict[str, Task],
    routed: dict[str, tuple[str, ...] | None],
    config: RunConfig,
    precisions: Sequence[str],
    device_map: str | None,
    progress: SweepProgress,
    scheme_shots: bool,
) -> list[ReportRun]:
    """run_sweep's body: check every input, then load each precision once and run every task on it."""
    from evalkit.backends import plugin
    from evalkit.machine import free_memory, is_main_process, is_single_process, process_device
    from evalkit.models.source import resolve_source
    from evalkit.questions.data import load_task_data
    from evalkit.questions.permute import permute_subjects
    from evalkit.store.disk import check_output_dir

    if not config.progress:  # transformers' own bars too ("Loading weights")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    backend = plugin(config.backend)
    if not backend.accelerate_launch and not is_single_process():
        raise EvalkitError(
            f"--backend {backend.name} spreads one engine over GPUs itself; do not start it under "
            "accelerate launch"
        )
    if device_map and not is_single_process():
        raise EvalkitError(
            "--device-map spreads one model over all GPUs of one process; under accelerate "
            "launch each process holds its own copy: use one or the other"
        )
    backend.check_settings(config, precisions)  # the flags alone, before any file is read
    source = resolve_source(config.model)
    device = process_device(config.device)
    # the backend's refusals come before any data or model is read
    backend_for = backend.check(config, precisions, source, device, device_map)
    base = {name: task_config(by_name[name], config, names, scheme_shots) for name, names in routed.items()}
    # every file of every task and every precision is checked before the (slow) model loads
    data = {
        name: load_task_data(
            by_name[name], c.data_dir, c.split, c.subjects, c.limit, c.shots, by_name[name].schemes[c.scheme]
        )
        for name, c in base.items()
    }
    for (
        name,
        task_data,
    ) in data.items():  # --permute refusals (options not separate, no answers) before loading
        permute_subjects(by_name[name], task_data, config.permute)
    if is_main_process():
        check_output_dir(config.output_dir)
    if config.limit is not None:
        log.warning(
            "--limit %d: only the first %d questions of each subject are scored; a smoke run, "
            "not comparable with published figures (flagged in the report)",
            config.limit,
            config.limit,
        )
    runs = []
    with contextlib.ExitStack() as stack:
        load = backend.open(config, source, device, device_map, stack)
        for precision in precisions:
            progress.doing = f"while loading the model at {precision}"
            loaded = load(precision, backend_for[precision])
            runs += _run_tasks(loaded, by_name, base, data, precision, backend_for[precision], progress)
            del loaded
            free_memory()
    return runs


def _run_tasks(
    loaded: LoadedModel,
    by_name: dict[str, Task],
    base: dict[str, RunConfig],
    data: dict[str, list[SubjectData]],
    precision: str,
    quant_backend: str | None,
    progress: SweepProgress,
) -> list[ReportRun]:
    """Every task on one loaded model (one precision); `progress` follows them for a Ctrl-C's line."""
    from evalkit.machine import is_main_process
    from evalkit.run.task import run_task

    runs = []
    for name, task_config in base.items():
        task_config = dataclasses.replace(task_config, precision=precision, quant_backend=quant_backend)
        progress.doing = f"before scoring {by_name[name].title} at {precision}"
        run_dir, saved = run_task(loaded, by_name[name], data[name], task_config)
        progress.finished.append(run_dir.path)
        if is_main_process():  # with its questions, so the tables carry CIs and the sweep its paired Δ
            print(f"{by_name[name].title} {precision}: {run_dir.path}", file=sys.stderr)
            runs.append(ReportRun(saved.result, by_name[name], run_dir.path, saved.questions))
    return runs
