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
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.report.tables import ReportRun
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


def _quant_backends(precisions: Sequence[str], config: RunConfig, device: str) -> dict[str, str | None]:
    """Each precision's backend, checked before anything loads; the default named where it was not given
    (one config, and one label, however it was asked); float precisions take none."""
    from evalkit.models.loading import check_precision
    from evalkit.models.quant.plans import QUANT_BITS

    backend_for = {p: config.quant_backend if p in QUANT_BITS else None for p in precisions}
    for precision in precisions:
        plan = check_precision(
            precision, backend_for[precision], device, config.model, config.trust_remote_code
        )
        if precision in QUANT_BITS and plan.backend != "pre-quantized":
            backend_for[precision] = plan.backend
    return backend_for


def run_sweep(
    tasks: Sequence[Task],
    config: RunConfig,
    precisions: Sequence[str],
    subjects: Sequence[str] | None = None,
    device_map: str | None = None,
) -> list[ReportRun]:
    """Validate all data and precisions up front, then per precision: load once, run every task, free.

    `config` holds the settings shared by every run (its task, subjects and precision are set here);
    the runs come back in order (main process only: the others return none).
    """
    from evalkit.machine import free_memory, is_main_process, is_single_process, process_device
    from evalkit.models.loading import load_model
    from evalkit.questions.data import load_task_data
    from evalkit.questions.permute import permute_subjects
    from evalkit.store.disk import check_output_dir

    by_name = {task.name: task for task in tasks}
    routed = subjects_by_task(tasks, subjects)
    if not config.progress:  # transformers' own bars too ("Loading weights")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    vllm = config.backend == "vllm"
    if vllm:  # vLLM importable, its settings and precisions runnable: before any data or model is read
        from evalkit.backends.vllm.loader import check_run

        if not is_single_process():
            raise EvalkitError(
                "--backend vllm spreads one engine over GPUs itself (--tensor-parallel-size, "
                "--pipeline-parallel-size); do not start it under accelerate launch"
            )
        check_run(config, precisions)
    device = process_device(config.device)
    if device_map and not is_single_process():
        raise EvalkitError(
            "--device-map spreads one model over all GPUs of one process; under accelerate "
            "launch each process holds its own copy: use one or the other"
        )
    base = {name: dataclasses.replace(config, task=name, subjects=names) for name, names in routed.items()}
    # every file of every task and every precision is checked before the (slow) model loads
    data = {
        name: load_task_data(by_name[name], c.data_dir, c.split, c.subjects, c.limit, c.shots)
        for name, c in base.items()
    }
    for (
        name,
        task_data,
    ) in data.items():  # --permute refusals (options not separate, no answers) before loading
        permute_subjects(by_name[name], task_data, config.permute)
    if is_main_process():
        check_output_dir(config.output_dir)
    backend_for = {p: None for p in precisions} if vllm else _quant_backends(precisions, config, device)
    if config.limit is not None:
        log.warning(
            "--limit %d: only the first %d questions of each subject are scored; a smoke run, "
            "not comparable with published figures (flagged in the report)",
            config.limit,
            config.limit,
        )
    runs = []
    with contextlib.ExitStack() as stack:
        model_dir = None
        if vllm:
            from evalkit.backends.vllm.loader import load_for_run, prepare_model_dir

            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="evalkit-vllm-"))
            model_dir = prepare_model_dir(config.model, work)
        for precision in precisions:
            if model_dir is not None:
                loaded = load_for_run(config, precision, model_dir)
            else:
                loaded = load_model(
                    config.model,
                    precision,
                    device,
                    config.trust_remote_code,
                    backend_for[precision],
                    device_map,
                )
            runs += _run_tasks(loaded, by_name, base, data, precision, backend_for[precision])
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
) -> list[ReportRun]:
    """Every task on one loaded model (one precision)."""
    from evalkit.machine import is_main_process
    from evalkit.run.task import run_task

    runs = []
    for name, task_config in base.items():
        task_config = dataclasses.replace(task_config, precision=precision, quant_backend=quant_backend)
        run_dir, saved = run_task(loaded, by_name[name], data[name], task_config)
        if is_main_process():  # with its questions, so the tables carry CIs and the sweep its paired Δ
            print(f"{by_name[name].title} {precision}: {run_dir.path}", file=sys.stderr)
            runs.append(ReportRun(saved.result, by_name[name], run_dir.path, saved.questions))
    return runs
