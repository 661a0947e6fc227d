"""Run directories on real files: round trip, resume by config hash, torn lines, atomic run.json."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
from builders import question, run_result

from evalkit.store.run_dir import SHARD_FILE, RunDir, write_submission
from evalkit.store.saved_runs import find_runs, load_run, short_model_name
from evalkit.types import EvalkitError, RunConfig


def config(tmp_path: Path, **overrides) -> RunConfig:
    return RunConfig(
        **{
            "model": "/models/Baichuan-13B-Base",
            "task": "ceval",
            "output_dir": str(tmp_path / "results"),
            **overrides,
        }
    )


def test_open_names_the_directory_and_writes_config_first(tmp_path):
    cfg = config(tmp_path)
    run = RunDir.open(cfg, "Baichuan-13B-Base")
    assert not run.resumed
    stamp, model, precision, task, scheme, digest = run.path.name.split("_")
    assert (model, precision, task, scheme, digest) == (
        "Baichuan-13B-Base",
        "fp32",
        "ceval",
        "official",
        cfg.config_hash(),
    )
    assert len(stamp) == 16 and stamp.endswith("Z")
    saved = json.loads((run.path / "config.json").read_text(encoding="utf-8"))
    assert saved["config_hash"] == cfg.config_hash() and saved["config"]["model"] == cfg.model
    assert not run.is_finished()


def test_resume_finds_the_same_config_and_not_a_different_one(tmp_path):
    first = RunDir.open(config(tmp_path), "m")
    again = RunDir.open(
        config(tmp_path, batch_tokens=999, progress=False), "m"
    )  # settings that change no score
    assert again.resumed and again.path == first.path
    other = RunDir.open(config(tmp_path, shots=3), "m")
    assert not other.resumed and other.path != first.path


def test_resume_picks_the_newest_of_several(tmp_path):
    first = RunDir.open(config(tmp_path), "m")
    newer = first.path.with_name("29990101T000000Z" + first.path.name[16:])
    shutil.copytree(first.path, newer)
    assert RunDir.open(config(tmp_path), "m").path == newer


def test_a_corrupt_config_in_output_dir_is_skipped_with_a_warning_not_blocking(tmp_path, caplog):
    broken = tmp_path / "results" / "x"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        run = RunDir.open(config(tmp_path), "m")
    assert not run.resumed and run.path != broken
    assert "skipping" in caplog.text and "x/config.json" in caplog.text


def test_append_then_completed_round_trips(tmp_path):
    run = RunDir.open(config(tmp_path), "m")
    batch = [question(0), question(1, pred="C"), question(2, subject="law", gold="B", pred="B")]
    run.append(batch[:2])
    run.append(batch[2:])
    assert run.completed() == {q.id: q for q in batch}
    assert RunDir.open(config(tmp_path), "m").completed() == {q.id: q for q in batch}


def test_torn_last_line_is_dropped_with_a_warning_and_cut_away(tmp_path, caplog):
    run = RunDir.open(config(tmp_path), "m")
    run.append([question(0), question(1)])
    path = run.path / "questions.jsonl"
    intact = path.read_bytes()
    with open(path, "ab") as f:  # what kill -9 in the middle of a write leaves behind
        f.write(question(2).to_json().encode("utf-8")[:37])
    with caplog.at_level(logging.WARNING, logger="evalkit.store.questions_file"):
        done = run.completed()
    assert list(done) == [question(0).id, question(1).id]
    assert "line 3" in caplog.text and "questions.jsonl" in caplog.text
    assert path.read_bytes() == intact
    run.append([question(2)])
    assert list(run.completed()) == [question(i).id for i in range(3)]


def test_append_after_a_torn_line_never_glues_onto_it(tmp_path):
    run = RunDir.open(config(tmp_path), "m")
    run.append([question(0)])
    with open(run.path / "questions.jsonl", "ab") as f:
        f.write(b'{"id": "ceval/acc')
    run.append([question(1)])
    assert list(run.completed()) == [question(0).id, question(1).id]


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"not json\n", "line 2 is not a question result"),
        (b"\n", "line 2 is not a question result"),
        (b'{"id": "x"}\n', "line 2 is not a question result"),
    ],
)
def test_a_bad_complete_line_is_an_error_naming_file_and_line_in_a_finished_run(tmp_path, bad, message):
    cfg = config(tmp_path)
    run = RunDir.open(cfg, "m")
    run.append([question(0)])
    with open(run.path / "questions.jsonl", "ab") as f:
        f.write(bad + (question(1).to_json() + "\n").encode("utf-8"))
    run.finish(run_result(cfg, [question(0), question(1)]))
    with pytest.raises(EvalkitError, match=f"questions.jsonl: {message}"):
        load_run(run.path)


@pytest.mark.parametrize("bad", [b"not json\n", b"\n", b'{"id": "x"}\n'])
def test_a_bad_complete_line_is_dropped_with_a_warning_on_resume(tmp_path, bad, caplog):
    run = RunDir.open(config(tmp_path), "m")
    run.append([question(0)])
    with open(run.path / "questions.jsonl", "ab") as f:
        f.write(bad + (question(1).to_json() + "\n").encode("utf-8"))
    with caplog.at_level(logging.WARNING):
        assert list(run.completed()) == [question(0).id, question(1).id]
    assert "questions.jsonl: line 2 is not a question result" in caplog.text
    assert "scored again" in caplog.text
    expected = question(0).to_json() + "\n" + question(1).to_json() + "\n"
    assert (run.path / "questions.jsonl").read_text(encoding="utf-8") == expected  # the lock holder rewrites


def test_a_question_scored_differently_twice_is_an_error_naming_both_lines(tmp_path):
    run = RunDir.open(config(tmp_path), "m")
    run.append([question(0), question(1), question(0, pred="B")])
    with pytest.raises(
        EvalkitError, match="line 3 scores question 'ceval/accountant/val/0' differently from line 1"
    ):
        run.completed()


def test_identical_duplicate_lines_heal_keeping_each_question_once(tmp_path):
    run = RunDir.open(config(tmp_path), "m")
    run.append([question(0), question(1), question(0), question(1), question(2)])
    assert list(run.completed()) == [question(i).id for i in range(3)]
    lines = (run.path / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [question(i).id for i in range(3)]


def test_finish_and_load_run_round_trip(tmp_path):
    cfg = config(
        tmp_path, subjects=("accountant", "law"), limit=2, scheme="baichuan"
    )  # tuples and dicts inside
    questions = [question(0), question(1, pred="D"), question(0, subject="law", gold="C", pred="C")]
    run = RunDir.open(cfg, "m")
    run.append(questions)
    result = run_result(cfg, questions)
    run.finish(result)
    assert run.is_finished()
    assert not list(run.path.glob("*.tmp"))
    loaded, loaded_questions = load_run(run.path)
    assert loaded == result  # nested RunConfig, Scheme (with its subject_names dict), Metrics, tuples
    assert loaded_questions == questions


def test_unlabeled_run_round_trips_with_no_overall(tmp_path):
    cfg = config(tmp_path, split="test")
    questions = [question(i, gold=None, pred="B") for i in range(3)]
    run = RunDir.open(cfg, "m")
    run.append(questions)
    run.finish(run_result(cfg, questions))
    loaded, _ = load_run(run.path)
    assert loaded.overall is None and loaded.subjects == {}


def test_a_leftover_temp_file_does_not_count_as_finished(tmp_path):
    run = RunDir.open(config(tmp_path), "m")
    (run.path / "run.json.tmp").write_text('{"half": ', encoding="utf-8")  # crash before os.replace
    assert not run.is_finished()
    with pytest.raises(EvalkitError, match="run did not finish.*rerun the same command to resume"):
        load_run(run.path)


def test_load_run_rejects_non_runs_and_changed_runs(tmp_path):
    with pytest.raises(EvalkitError, match="not a run directory"):
        load_run(tmp_path)
    cfg = config(tmp_path)
    run = RunDir.open(cfg, "m")
    run.append([question(0), question(1)])
    run.finish(run_result(cfg, [question(0), question(1)]))
    with open(run.path / "questions.jsonl", "ab") as f:
        f.write(b'{"id": "torn')
    with pytest.raises(EvalkitError, match="line 3 is incomplete"):
        load_run(run.path)
    assert (run.path / "questions.jsonl").read_bytes().endswith(b'{"id": "torn')  # reading never repairs
    (run.path / "questions.jsonl").write_text(question(0).to_json() + "\n", encoding="utf-8")
    with pytest.raises(EvalkitError, match="counts 2 scored questions but questions.jsonl holds 1"):
        load_run(run.path)
    (run.path / "run.json").write_text('{"config": {}}', encoding="utf-8")
    with pytest.raises(EvalkitError, match="not a run result"):
        load_run(run.path)


def test_find_runs_below_folders_skips_unfinished_with_a_warning(tmp_path, caplog):
    cfg = config(tmp_path)
    finished = RunDir.open(cfg, "m")
    finished.append([question(0)])
    finished.finish(run_result(cfg, [question(0)]))
    unfinished = RunDir.open(config(tmp_path, shots=0), "m")
    with caplog.at_level(logging.WARNING, logger="evalkit.store.saved_runs"):
        assert find_runs([tmp_path]) == [finished.path]
    assert f"skipping unfinished run {unfinished.path}" in caplog.text
    assert find_runs([unfinished.path, finished.path, tmp_path]) == [unfinished.path, finished.path]
    with pytest.raises(EvalkitError, match="no such run directory"):
        find_runs([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalkitError, match="no finished run directories"):
        find_runs([tmp_path / "empty"])


def test_find_runs_follows_a_folder_of_links_to_runs(tmp_path):
    cfg = config(tmp_path / "all")
    run = RunDir.open(cfg, "m")
    run.append([question(0)])
    run.finish(run_result(cfg, [question(0)]))
    (tmp_path / "picked").mkdir()
    (tmp_path / "picked" / run.path.name).symlink_to(run.path, target_is_directory=True)
    assert find_runs([tmp_path / "picked"]) == [tmp_path / "picked" / run.path.name]


def test_write_submission_is_the_ceval_leaderboard_layout(tmp_path):
    preds = [
        question(0, gold=None, pred="B"),
        question(1, gold=None, pred="D"),
        question(0, subject="law", gold=None, pred="A"),
    ]
    path = write_submission(tmp_path / "submission.json", preds)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "accountant": {"0": "B", "1": "D"},
        "law": {"0": "A"},
    }
    with pytest.raises(EvalkitError, match="question '0' twice"):
        write_submission(tmp_path / "again.json", preds + [dataclasses.replace(preds[0], pred="C")])


@pytest.mark.parametrize(
    "model, short",
    [
        ("baichuan-inc/Baichuan-13B-Base", "Baichuan-13B-Base"),
        ("/work/shared/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("/tmp/my model (v2)/", "my-model-v2"),
        ("///", "model"),
    ],
)
def test_short_model_name(model, short):
    assert short_model_name(model) == short


def test_merging_shards_folds_a_merge_interrupted_before_the_shards_were_deleted(tmp_path):
    """kill -9 after questions.jsonl was rewritten but before the shard files were removed."""
    run_dir = RunDir(tmp_path, resumed=True, shard=0)
    first, second = question(0), question(1)
    run_dir.append([first, second])
    RunDir(tmp_path, resumed=True, shard=1).append([question(2)])
    (tmp_path / "questions.jsonl").write_text(
        first.to_json() + "\n" + second.to_json() + "\n", encoding="utf-8"
    )
    RunDir(tmp_path, resumed=True).merge_shards(
        ["ceval/accountant/val/2", "ceval/accountant/val/0", "ceval/accountant/val/1"]
    )
    assert not list(tmp_path.glob(SHARD_FILE.format(rank="*")))
    assert list(RunDir(tmp_path, resumed=True).completed()) == [
        "ceval/accountant/val/2",
        "ceval/accountant/val/0",
        "ceval/accountant/val/1",
    ]


def test_merging_shards_refuses_a_question_scored_twice_differently(tmp_path):
    RunDir(tmp_path, resumed=True, shard=0).append([question(0, pred="A")])
    RunDir(tmp_path, resumed=True, shard=1).append([question(0, pred="B")])
    with pytest.raises(EvalkitError, match="ceval/accountant/val/0.*scored twice"):
        RunDir(tmp_path, resumed=True).merge_shards()
