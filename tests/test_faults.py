"""Faults through the CLI on the tiny real models: each gives its exit code and message, and loses nothing.

Concurrency runs real processes (`python run_eval.py`); a full and a read-only disk are a real tmpfs
(mount needs root: skipped with the reason elsewhere; chmod would not stop root). No mocks.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datafiles import write_data_dir
from support_cli import eval_args, run_dirs

from run_eval import main

RUN_EVAL = str(Path(__file__).resolve().parents[1] / "run_eval.py")
SUBJECTS = ("abstract_algebra", "anatomy", "astronomy")
MMLU = {"mmlu": SUBJECTS}  # what most runs here score
BIG_ROWS = 120  # MMLU test rows per subject: a run that lasts long enough for a second one to meet it
MID_ROWS = 40  # the same for a run to interrupt


# ---- helpers ----


def lines_of(run_dir: Path) -> list[dict]:
    path = run_dir / "questions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def scored(out: Path) -> dict[str, dict]:
    """id -> record of the one run directory under `out`; fails on a question written twice."""
    (run_dir,) = run_dirs(out)
    rows = lines_of(run_dir)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), f"a question was written twice in {run_dir}"
    return by_id


def run_json(out: Path) -> dict:
    (run_dir,) = run_dirs(out)
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def same_scores(got: dict[str, dict], expected: dict[str, dict]) -> None:
    assert got.keys() == expected.keys()
    for qid, row in expected.items():
        assert got[qid]["pred"] == row["pred"] and got[qid]["prompt_hash"] == row["prompt_hash"], qid
        assert got[qid]["logprobs"] == pytest.approx(row["logprobs"], abs=1e-4), qid


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, RUN_EVAL, *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def csv_path(data: Path, subject: str, split: str = "test") -> Path:
    return data / "mmlu" / split / f"{subject}_{split}.csv"


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real, small tmpfs at `path` (skips where this process may not mount)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}): a full or read-only disk needs one; "
            "as root, chmod does not stop writes"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


# ---- fixtures ----


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("faults_data"), "mmlu", {s: 6 for s in SUBJECTS})


@pytest.fixture(scope="module")
def big_data(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("faults_big"), "mmlu", {s: BIG_ROWS for s in SUBJECTS})


@pytest.fixture(scope="module")
def reference(tiny_spm_model_dir, data, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("faults_ref")
    assert main(eval_args(tiny_spm_model_dir, data, out, subjects=MMLU)) == 0
    return scored(out)


@pytest.fixture(scope="module")
def big_reference(tiny_spm_model_dir, big_data, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("faults_big_ref")
    assert main(eval_args(tiny_spm_model_dir, big_data, out, subjects=MMLU)) == 0
    return scored(out)


def copy_data(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


# ---- 1. two runs of one config at once ----


def test_two_runs_started_in_one_second_share_one_directory(
    tiny_spm_model_dir, big_data, big_reference, tmp_path
):
    args = eval_args(
        tiny_spm_model_dir, big_data, tmp_path, "--batch-tokens", "64", "--engine", "plain", subjects=MMLU
    )
    jobs = [cli(args), cli(args)]
    outcomes = [(job.wait(timeout=600), job.stderr.read()) for job in jobs]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 2]), outcomes  # the second is refused, or comes after the first
    for code, err in outcomes:
        if code == 2:
            assert "is being scored by another evalkit process (pid " in err and "Traceback" not in err
    same_scores(scored(tmp_path), big_reference)  # one directory, every question once
    assert main(args) == 0  # and the directory stays usable
    assert run_json(tmp_path)["timings"]["resumed_questions"] == len(big_reference)


def test_a_second_run_is_refused_naming_the_first_and_a_kill_loses_nothing(
    tiny_spm_model_dir, big_data, big_reference, tmp_path, capsys
):
    args = eval_args(
        tiny_spm_model_dir, big_data, tmp_path, "--batch-tokens", "64", "--engine", "plain", subjects=MMLU
    )
    first = cli(args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if run_dirs(tmp_path) and len(lines_of(run_dirs(tmp_path)[0])) >= 3:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could meet it"
    assert main(args) == 2  # the second, while the first scores
    message = error_line(capsys)
    assert f"is being scored by another evalkit process (pid {first.pid} " in message
    os.kill(first.pid, signal.SIGKILL)  # kill -9 mid-run: the lock goes with the process
    first.wait()
    kept = {row["id"] for row in lines_of(run_dirs(tmp_path)[0])}
    assert 3 <= len(kept) < len(big_reference)
    assert main(args) == 0
    same_scores(scored(tmp_path), big_reference)
    assert run_json(tmp_path)["timings"]["resumed_questions"] >= len(kept) - 1  # a torn last line is rescored


def test_duplicate_identical_lines_heal_on_the_next_run(
    tiny_spm_model_dir, data, reference, tmp_path, caplog
):
    args = eval_args(tiny_spm_model_dir, data, tmp_path, subjects=MMLU)
    assert main(args) == 0
    (run_dir,) = run_dirs(tmp_path)
    (run_dir / "run.json").unlink()
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # what two processes appending to one file left: 11 lines of 8 questions, interleaved
    (run_dir / "questions.jsonl").write_text("".join(lines[:8] + lines[2:5] + lines[8:]), encoding="utf-8")
    assert main(args) == 0
    assert "3 lines repeated earlier records exactly" in caplog.text
    same_scores(scored(tmp_path), reference)
    assert len(lines_of(run_dir)) == len(reference)


def test_a_kill_mid_write_resumes_to_the_same_results(tiny_spm_model_dir, data, reference, tmp_path):
    args = eval_args(tiny_spm_model_dir, data, tmp_path, subjects=MMLU)
    assert main(args) == 0
    (run_dir,) = run_dirs(tmp_path)
    (run_dir / "run.json").unlink()
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (run_dir / "questions.jsonl").write_text("".join(lines[:5]) + lines[5][:20], encoding="utf-8")
    assert main(args) == 0
    same_scores(scored(tmp_path), reference)
    assert run_json(tmp_path)["timings"]["resumed_questions"] == 5


# ---- 2. stale resume ----


def test_changed_data_is_scored_again_not_resumed(tiny_spm_model_dir, data, reference, tmp_path, caplog):
    copy = copy_data(data, tmp_path)
    args = eval_args(tiny_spm_model_dir, copy, tmp_path / "out", subjects=MMLU)
    assert main(args) == 0
    (run_dir,) = run_dirs(tmp_path / "out")
    (run_dir / "run.json").unlink()  # an unfinished run, resumed after the files changed under it
    before = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["data_files"]
    path = csv_path(copy, "anatomy")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    rows[0][0] += " (reworded)"  # its prompt changes
    rows[3][5] = "ABCD"[("ABCD".index(rows[3][5]) + 1) % 4]  # its gold answer changes
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    assert main(args) == 0
    assert "2 questions scored before are scored again" in caplog.text
    run = run_json(tmp_path / "out")
    assert run["timings"]["rescored_questions"] == 2
    assert run["timings"]["resumed_questions"] == len(reference) - 2
    got = scored(tmp_path / "out")
    assert got.keys() == reference.keys()
    assert got["mmlu/anatomy/test/0"]["prompt_hash"] != reference["mmlu/anatomy/test/0"]["prompt_hash"]
    assert got["mmlu/anatomy/test/3"]["gold"] != reference["mmlu/anatomy/test/3"]["gold"]
    after = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["data_files"]
    assert {k for k in after if after[k] != before[k]} == {"mmlu/test/anatomy_test.csv"}


# ---- 3. malformed input files ----


def test_a_stray_quote_in_the_last_row_is_an_error_naming_the_line(
    tiny_spm_model_dir, data, tmp_path, capsys
):
    copy = copy_data(data, tmp_path)
    path = csv_path(copy, "astronomy")
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write('"Stray" quote in the question,a,b,c,d,A\n')  # 6 fields to a lenient reader
    lines = path.read_bytes().count(b"\n")
    assert main(eval_args(tiny_spm_model_dir, copy, tmp_path / "out", subjects=MMLU)) == 2
    message = error_line(capsys)
    assert str(path) in message and f"line {lines}" in message and "quote" in message
    assert not (tmp_path / "out").exists()  # found before the model loads


def test_bytes_that_are_not_utf8_are_an_error_naming_the_line(tiny_spm_model_dir, data, tmp_path, capsys):
    copy = copy_data(data, tmp_path)
    path = csv_path(copy, "anatomy")
    body = path.read_bytes().split(b"\n")
    body[2] = body[2][:1] + b"\xe9" + body[2][1:]  # a latin-1 "é", not UTF-8
    path.write_bytes(b"\n".join(body))
    assert main(eval_args(tiny_spm_model_dir, copy, tmp_path / "out", subjects=MMLU)) == 2
    message = error_line(capsys)
    assert str(path) in message and "line 3 is not UTF-8" in message


# ---- 4. late validation ----


def test_a_short_dev_file_of_a_later_task_stops_the_run_before_any_scoring(
    tiny_spm_model_dir, tmp_path, capsys
):
    root = write_data_dir(tmp_path / "data", "mmlu", {"anatomy": 4})
    write_data_dir(root, "cmmlu", {"agronomy": 4}, dev_rows=2)
    args = [
        "eval",
        "--model",
        str(tiny_spm_model_dir),
        "--data-dir",
        str(root),
        "--tasks",
        "mmlu,cmmlu",
        "--subjects",
        "mmlu/anatomy,cmmlu/agronomy",
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(args) == 2
    message = error_line(capsys)
    assert str(root / "cmmlu" / "dev" / "agronomy.csv") in message and "fewer than --shots 5" in message
    assert not (tmp_path / "out").exists()  # MMLU was not scored first, no directory holds only config.json


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--shots", "-1", "argument --shots: must be 0 or more, got -1"),
        ("--batch-tokens", "0", "argument --batch-tokens: must be 1 or more, got 0"),
        ("--limit", "0", "argument --limit: must be 1 or more, got 0"),
    ],
)
def test_flags_out_of_range_exit_2_before_anything_loads(flag, value, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", "none", "--output-dir", str(tmp_path / "out"), flag, value])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_config_json_under_output_dir_does_not_block_new_runs(
    tiny_spm_model_dir, data, reference, tmp_path, caplog
):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json", encoding="utf-8")
    assert main(eval_args(tiny_spm_model_dir, data, tmp_path, subjects=MMLU)) == 0
    assert "skipping" in caplog.text and "junk" in caplog.text
    (run_dir,) = [p for p in run_dirs(tmp_path) if p.name != "junk"]
    assert len(lines_of(run_dir)) == len(reference)


# ---- 5. OS errors and model loading: one error line, exit 2 ----


def test_output_dir_naming_a_file(tiny_spm_model_dir, data, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory", encoding="utf-8")
    assert main(eval_args(tiny_spm_model_dir, data, tmp_path / "file", subjects=MMLU)) == 2
    assert "is a file, not a directory" in error_line(capsys)
    assert main(eval_args(tiny_spm_model_dir, data, tmp_path / "file" / "runs", subjects=MMLU)) == 2
    assert "Not a directory" in error_line(capsys)


def test_a_read_only_results_disk_then_made_writable_resumes(
    tiny_spm_model_dir, data, reference, tmp_path, capsys
):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "runs"
        args = eval_args(tiny_spm_model_dir, data, out, subjects=MMLU)
        assert main(args) == 0
        (run_dir,) = run_dirs(out)
        (run_dir / "run.json").unlink()
        lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (run_dir / "questions.jsonl").write_text("".join(lines[:7]), encoding="utf-8")  # an unfinished run
        remount(disk, "ro")
        try:
            assert main(args) == 2
            message = error_line(capsys)
            assert "cannot hold runs: Read-only file system" in message and "writable" in message
            assert len(lines_of(run_dir)) == 7  # nothing lost
        finally:
            remount(disk, "rw")
        assert main(args) == 0
        same_scores(scored(out), reference)
        assert run_json(out)["timings"]["resumed_questions"] == 7


def test_a_full_results_disk_stops_cleanly_and_the_rerun_resumes(
    tiny_spm_model_dir, data, reference, tmp_path, capsys
):
    page = os.sysconf("SC_PAGE_SIZE")
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # fill the disk, then give back room for config.json, the lock holder, some questions
                f.write(b"\0" * page)
        os.truncate(filler, filler.stat().st_size - 3 * page)
        out = disk / "runs"
        args = eval_args(tiny_spm_model_dir, data, out, "--batch-tokens", "64", subjects=MMLU)
        assert main(args) == 2
        message = error_line(capsys)
        assert "No space left on device" in message and "then rerun the same command" in message
        (run_dir,) = run_dirs(out)
        kept = len(lines_of_tolerant(run_dir))
        assert 0 < kept < len(reference)
        filler.unlink()  # space freed
        assert main(args) == 0
        same_scores(scored(out), reference)
        assert run_json(out)["timings"]["resumed_questions"] == kept


def lines_of_tolerant(run_dir: Path) -> list[dict]:
    """Complete lines only: a full disk may have cut the last one."""
    text = (run_dir / "questions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def test_a_model_directory_without_a_tokenizer(tiny_spm_model_dir, data, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_spm_model_dir / name).exists():
            shutil.copy(tiny_spm_model_dir / name, model / name)
    assert main(eval_args(model, data, tmp_path / "out", subjects=MMLU)) == 2
    assert f"no tokenizer in {model}" in error_line(capsys)
    assert not run_dirs(tmp_path / "out")


def test_a_truncated_gguf_file(data, tmp_path, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.truncate(path, path.stat().st_size // 2)  # an interrupted download
    assert main(eval_args(path, data, tmp_path / "out", subjects=MMLU)) == 2
    message = error_line(capsys)
    assert f"cannot read the GGUF file {path}" in message and "truncated" in message


def test_a_repository_that_needs_its_own_code_without_the_flag(tiny_spm_model_dir, data, tmp_path, capsys):
    model = tmp_path / "custom"
    shutil.copytree(tiny_spm_model_dir, model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config.update(
        model_type="evalkit_fault_custom",
        auto_map={"AutoConfig": "custom.FaultConfig", "AutoModelForCausalLM": "custom.FaultModel"},
    )
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    marker = tmp_path / "code-ran"
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    assert main(eval_args(model, data, tmp_path / "out", subjects=MMLU)) == 2
    message = error_line(capsys)
    assert "needs its own Python code" in message and "--trust-remote-code" in message
    assert not marker.exists()  # its code was not run


def test_report_match_without_equals(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path), "--match", "X"])
    assert exit_.value.code == 2
    assert "argument --match: expected MODEL=NAME" in capsys.readouterr().err


# ---- 7. messages ----


def test_nan_logits_name_the_question_and_subject(tiny_spm_model_dir, data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_spm_model_dir, model)
    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"][:] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert main(eval_args(model, data, tmp_path / "out", subjects=MMLU)) == 2
    message = error_line(capsys)
    assert "NaN/inf letter logits for question mmlu/abstract_algebra/test/" in message
    assert "(subject abstract_algebra" in message and "weights" in message


def test_prompts_longer_than_the_context_warn_per_subject_and_are_recorded(
    tiny_spm_model_dir, data, tmp_path, caplog
):
    model = tmp_path / "short"
    shutil.copytree(tiny_spm_model_dir, model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["max_position_embeddings"] = 64
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert main(eval_args(model, data, tmp_path / "out", subjects=MMLU)) == 0
    long = run_json(tmp_path / "out")["long_prompts"]
    assert long["context"] == 64 and long["policy"] == "drop_last"
    assert set(long["subjects"]) == set(SUBJECTS)
    for subject in SUBJECTS:
        count = long["subjects"][subject]["prompts"]
        assert f"/{subject}: {count} of 6 prompts are longer than the model's context of 64" in caplog.text


def test_a_huge_question_under_a_scheme_without_length_policy_is_an_error(
    tiny_spm_model_dir, tmp_path, capsys
):
    root = write_data_dir(tmp_path / "data", "ceval", {"law": 3})
    path = root / "ceval" / "val" / "law_val.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    rows[2][1] = "长" * 100_000
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)
    args = eval_args(tiny_spm_model_dir, root, tmp_path / "out", subjects={"ceval": ("law",)})
    assert main(args) == 2
    message = error_line(capsys)
    assert (
        "prompts longer than the model's context of 4096 positions (subjects: law 1; e.g. ceval/law/val/1"
        in message
        and "--scheme lm-eval" in message
    )
    assert not run_dirs(tmp_path / "out")  # no directory is made for a run that cannot start


def test_a_data_parallel_run_meeting_a_held_directory_stops_every_process(tiny_spm_model_dir, data, tmp_path):
    """Under accelerate launch only the main process takes the lock; when it cannot, every process exits 2
    with its message instead of waiting at a barrier for ever."""
    from filelock import FileLock
    from test_sharing import launch_command

    args = eval_args(tiny_spm_model_dir, data, tmp_path, subjects=MMLU)
    assert main(args) == 0  # this process's pid is in the holder record now
    (run_dir,) = run_dirs(tmp_path)
    with FileLock(run_dir / ".lock", timeout=0):  # a live holder: this test process
        done = subprocess.run(launch_command(2, args), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0  # within the timeout: no process waited at a barrier
    refusals = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # each process exits 2 with the message; torchrun may stop the second before it prints
    assert refusals and "exitcode  : 2" in done.stderr, done.stderr[-3000:]
    assert all(f"is being scored by another evalkit process (pid {os.getpid()} " in line for line in refusals)


# ---- 8. a hand-edited question record, and Ctrl-C ----


def edit_line(run_dir: Path, change: dict) -> int:
    """Apply `change` to the first wrong answer's line of questions.jsonl (a number: NaN, as json writes
    it, stays valid JSON); returns its line number."""
    path = run_dir / "questions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    index = next(i for i, row in enumerate(rows) if row["pred"] != row["gold"])
    rows[index] = {**rows[index], **change}
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return index + 1


@pytest.fixture(scope="module")
def finished_run(tiny_spm_model_dir, data, tmp_path_factory) -> Path:
    """An output folder holding one finished, untouched run (copied by each test that edits it)."""
    out = tmp_path_factory.mktemp("faults_records")
    assert main(eval_args(tiny_spm_model_dir, data, out, subjects=MMLU)) == 0
    return out


WRONG_FIELDS = [
    ({"correct": "yes"}, "correct is 'yes', expected false"),
    ({"correct": True}, "correct is True, expected false"),  # would raise the score on resume
    ({"logprobs": "oops"}, "logprobs is 'oops', expected a list of 4 numbers"),
    ({"logprobs": [-1.0, float("nan"), -2.0, -3.0]}, "logprobs holds nan"),
    ({"pred": 3}, "pred is 3, expected one of A, B, C, D"),
    ({"gold": "E"}, "gold is 'E', expected one of A, B, C, D or null"),
    ({"shots_used": -1}, "shots_used is -1, expected a non-negative integer"),
    ({"prompt_tokens": "57"}, "prompt_tokens is '57', expected a non-negative integer"),
    ({"id": 7}, "id is 7, expected a non-empty string"),
    ({"note": "checked by hand"}, "unexpected field 'note'"),
]


@pytest.mark.parametrize("change, problem", WRONG_FIELDS, ids=[next(iter(c)) for c, _ in WRONG_FIELDS])
def test_a_wrong_typed_field_is_an_error_in_report_and_compare_and_rescored_on_resume(
    tiny_spm_model_dir, data, finished_run, change, problem, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    (run_dir,) = run_dirs(out)
    untouched = (run_dir / "questions.jsonl").read_bytes()
    number = edit_line(run_dir, change)
    where = f"{run_dir / 'questions.jsonl'}: line {number} is not a question result ({problem}"
    assert main(["report", str(out)]) == 2
    assert error_line(capsys).startswith(f"error: {where}")
    assert main(["compare", str(finished_run), str(out)]) == 2
    assert error_line(capsys).startswith(f"error: {where}")
    (run_dir / "run.json").unlink()  # an unfinished run, resumed: the line is dropped, its question rescored
    assert main(eval_args(tiny_spm_model_dir, data, out, subjects=MMLU)) == 0
    assert where in caplog.text and "its question is scored again" in caplog.text
    assert (run_dir / "questions.jsonl").read_bytes() == untouched
    assert run_json(out)["timings"]["resumed_questions"] == len(untouched.splitlines()) - 1
    assert main(["compare", str(finished_run), str(out)]) == 0


def test_report_and_compare_on_a_wrong_typed_record_in_real_processes_and_the_remedy(
    tiny_spm_model_dir, data, finished_run, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    (run_dir,) = run_dirs(out)
    untouched = (run_dir / "questions.jsonl").read_bytes()
    number = edit_line(run_dir, {"correct": "yes"})
    for args in (["report", str(out)], ["compare", str(finished_run), str(out)]):
        done = subprocess.run([sys.executable, RUN_EVAL, *args], env=env(), capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert f"questions.jsonl: line {number} is not a question result (correct is 'yes'" in line
        assert "rerun the run's command to score that question again" in line
    assert (
        main(eval_args(tiny_spm_model_dir, data, out, subjects=MMLU)) == 0
    )  # what the message says, on the finished run
    assert (run_dir / "questions.jsonl").read_bytes() == untouched
    assert main(["compare", str(finished_run), str(out)]) == 0


def saved_lines(run_dir: Path) -> int:
    """Complete lines of questions.jsonl (a torn last line is not saved)."""
    path = run_dir / "questions.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def mid_data(tmp_path_factory) -> Path:
    """Enough questions for a run scored one per forward to last seconds (time to interrupt it)."""
    return write_data_dir(tmp_path_factory.mktemp("faults_mid"), "mmlu", {s: MID_ROWS for s in SUBJECTS})


def test_ctrl_c_mid_scoring_says_what_is_saved_and_the_rerun_ends_equal(
    tiny_spm_model_dir, mid_data, tmp_path
):
    one_per_forward = ("--batch-tokens", "64", "--engine", "plain")  # the same forwards however it resumes
    args = eval_args(tiny_spm_model_dir, mid_data, tmp_path / "out", *one_per_forward, subjects=MMLU)
    job = cli(args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if run_dirs(tmp_path / "out") and saved_lines(run_dirs(tmp_path / "out")[0]) >= 3:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before it could be interrupted"
    job.send_signal(signal.SIGINT)
    code = job.wait(timeout=120)
    err = job.stderr.read()
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    (run_dir,) = run_dirs(tmp_path / "out")
    saved = len(scored(tmp_path / "out"))
    total = MID_ROWS * len(SUBJECTS)
    assert 3 <= saved < total and not (run_dir / "run.json").exists()
    assert err.strip().splitlines()[-1] == (
        f"interrupted: {saved} of {total} questions are saved in {run_dir}; rerun the same command to resume"
    )
    assert main(args) == 0
    assert run_json(tmp_path / "out")["timings"]["resumed_questions"] == saved
    assert (
        main(eval_args(tiny_spm_model_dir, mid_data, tmp_path / "whole", *one_per_forward, subjects=MMLU))
        == 0
    )
    (whole,) = run_dirs(tmp_path / "whole")
    assert (run_dir / "questions.jsonl").read_bytes() == (whole / "questions.jsonl").read_bytes()
