"""The CLI on par with HTTP (issue 26): one answer object (band, cut and its source, closest miss, why
unanswered) in `query --json`, a row per question in --csv/--tsv/--nl, --answer-only, `get`, `export`
that `index` reads back, and the small manners (--quiet, tune --feedback with too few questions, models
at 80 columns). Real model, real indexes; the commands run through tests/cli_driver.py."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from conftest import EXAMPLES, run_cli
from search.answer import BELOW_CUT, FILTER_MATCHED_NOTHING, NOTHING_FOUND, answer
from search.searcher import Hit
from test_cli_errors import Driver

OFF_TOPIC = "What is the capital of Australia?"


# -- the answer object, pure --------------------------------------------------------------------------


def hit(rank: int, key: str, score: float) -> Hit:
    return Hit(rank, key, score, f"text of {key}", {"category": "billing"})


def test_an_answer_keeps_the_hits_past_the_cut_and_counts_the_rest():
    made = answer("refund?", [hit(1, "a", 0.8), hit(2, "b", 0.45), hit(3, "c", 0.3)], cut=0.4,
                  cut_source="calibrated on 3", mode="dense")
    data = made.to_dict()
    assert [h["key"] for h in data["hits"]] == ["a", "b"] and data["below_cut"] == 1
    assert [h["band"] for h in data["hits"]] == ["good", "possible"]
    assert (data["answered"], data["closest"], data["reason"], data["why"]) == (True, None, None, None)


def test_an_unanswered_question_says_why_and_shows_the_closest_miss():
    below = answer("capital?", [hit(1, "a", 0.21), hit(2, "b", 0.2)], cut=0.4, cut_source="given", mode="dense")
    assert (below.answered, below.reason, below.closest.key, below.below_cut) == (False, BELOW_CUT, "a", 2)
    assert below.why == "no good answer: the closest entry (a) scores 0.2100, below the cut 0.4000 (given)"
    assert below.to_dict()["closest"]["band"] == "below"
    filtered = answer("refund?", [], cut=None, cut_source=None, mode="dense", filtered=True,
                      filter_problem="no entry with category=Billing (values: billing)")
    assert (filtered.reason, filtered.why) == (FILTER_MATCHED_NOTHING, "no entry with category=Billing (values: billing)")
    nothing = answer("zzz", [], cut=None, cut_source=None, mode="keyword")
    assert (nothing.reason, nothing.why) == (NOTHING_FOUND, "no entry shares a word with the question")


def test_the_cut_says_where_it_came_from():
    from indexer.store.settings import SearchSettings
    from search.answer import cut_source

    calibrated = SearchSettings(min_score=0.4, calibration={"in_scope": 20, "out_of_scope": 4})
    assert cut_source(calibrated, None, 0.4) == "calibrated on 24 labelled"
    assert cut_source(calibrated, 0.5, 0.5) == "given" and cut_source(calibrated, None, None) is None


# -- the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(faq_index_master, tmp_path_factory):
    index = tmp_path_factory.mktemp("answers") / "index"
    shutil.copytree(faq_index_master, index, ignore=shutil.ignore_patterns("write.lock"))
    driver = Driver(tmp_path_factory.mktemp("driver"))

    def run(*argv, stdin: bytes | None = None):
        return driver.run([str(arg).encode() for arg in argv], stdin)

    yield index, run
    driver.close()


@pytest.mark.slow
def test_json_of_an_unanswered_question_carries_the_closest_miss_and_the_reason(cli):
    index, run = cli
    code, out, err = run("query", index, OFF_TOPIC, "I forgot my password", "--min-score", "0.5", "-k", "3", "--json")
    missed, answered = map(json.loads, out.splitlines())
    assert code == 1, err
    assert (missed["answered"], missed["hits"], missed["reason"], missed["cut"]) == (False, [], "below_cut", 0.5)
    assert missed["closest"]["rank"] == 1 and missed["closest"]["score"] < 0.5 and missed["closest"]["band"] == "below"
    assert missed["below_cut"] == 3 and missed["cut_source"].startswith("given")
    assert f"({missed['closest']['key']})" in missed["why"]
    assert answered["answered"] and answered["hits"][0]["key"] == "en-001" and answered["hits"][0]["band"] == "good"
    assert answered["closest"] is None and answered["reason"] is None


@pytest.mark.slow
def test_csv_with_a_file_gives_a_row_per_question_with_answered(cli, tmp_path):
    index, run = cli
    questions = tmp_path / "questions.txt"
    questions.write_text(f"I forgot my password\n{OFF_TOPIC}\nhow much is shipping?\n", encoding="utf-8")
    code, out, err = run("query", index, "--file", questions, "-k", "1", "--min-score", "0.5", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1, err
    assert [(row["question"], row["answered"]) for row in rows] == [
        ("I forgot my password", "true"), (OFF_TOPIC, "false"), ("how much is shipping?", "true")]
    assert rows[1]["key"] == "" and rows[1]["why"].startswith("no good answer: the closest entry")
    assert rows[0]["key"] == "en-001" and rows[0]["why"] == ""
    code, out, _ = run("query", index, "--file", questions, "-k", "1", "--min-score", "0.5", "--nl", "--no-fail")
    assert code == 0 and [json.loads(line)["answered"] for line in out.splitlines()] == [True, False, True]


@pytest.mark.slow
def test_answer_only_prints_the_top_answer_and_nothing_else(cli):
    index, run = cli
    code, out, err = run("query", index, "I forgot my password", "--answer-only")
    assert code == 0 and out.startswith('On the Harbor sign-in page, click "Forgot password?"') and out.count("\n") == 1
    code, out, _ = run("query", index, "I forgot my password", "--answer-only", "--fields", "category")
    assert (code, out) == (0, "account\n")
    code, out, _ = run("query", index, OFF_TOPIC, "--answer-only", "--min-score", "0.5")
    assert (code, out) == (1, "")


@pytest.mark.slow
def test_get_shows_an_entry_and_export_round_trips_through_index(cli, tmp_path):
    index, run = cli
    code, out, err = run("get", index, "en-001", "--json")
    entry = json.loads(out)
    assert code == 0 and entry["key"] == "en-001" and entry["text"].startswith("I forgot my password")
    assert entry["group"] == "g-password-reset" and entry["fields"]["category"] == "account"
    assert "reset link" in entry["fields"]["answer"] and entry["variants"][0] == "en-001"
    exported = tmp_path / "faq.jsonl"
    code, out, err = run("export", index, "-o", exported)
    assert code == 0 and out == "" and len(exported.read_text(encoding="utf-8").splitlines()) == 50
    options = err.split("--format jsonl ")[1].split()
    assert options == ["-t", "question", "--id-field", "id", "--group-field", "group"]
    again = tmp_path / "again"
    code, _, err = run("index", again, exported, "--format", "jsonl", *options, "-q")
    assert code == 0, err
    from indexer.store.folder import connect

    def rows(folder):
        db = connect(folder, readonly=True)
        try:
            return db.execute("SELECT key, text, fields, group_key FROM documents ORDER BY key").fetchall()
        finally:
            db.close()

    assert [(k, t, json.loads(f), g) for k, t, f, g in rows(again)] == [(k, t, json.loads(f), g) for k, t, f, g in rows(index)]


@pytest.mark.slow
def test_quiet_prints_nothing_on_success_and_empty_stdin_is_named(cli):
    index, run = cli
    code, out, err = run("add", index, EXAMPLES / "faq_en.csv", "-t", "question", "--group-field", "group", "--quiet")
    assert (code, out, err) == (0, "", "")
    code, out, err = run("query", index, "-", stdin=b"")
    assert code == 2 and "stdin was empty" in err


@pytest.mark.slow
def test_tune_from_too_little_feedback_says_so(cli):
    from indexer.store.feedback import FeedbackStore

    index, run = cli
    store = FeedbackStore(index)
    store.add("I forgot my password", "en-001", "up")
    store.close()
    code, out, err = run("tune", index, "--feedback")
    assert code == 1 and "only 1 question has an answer marked right; tuning needs at least 5" in err


def test_models_never_breaks_a_name_mid_word():
    shown = run_cli("models", env={"COLUMNS": "80"}, check=True).stdout
    assert "multilingual-e5-small" in shown and "all-MiniLM-L6-v2" in shown
    assert all(len(line) <= 80 for line in shown.splitlines())
