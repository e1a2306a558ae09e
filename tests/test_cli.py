"""The `bertdex` command as a user runs it: real subprocesses, real model, real files."""

from __future__ import annotations

import json

from conftest import EXAMPLES, run_cli


def test_index_query_info_end_to_end(tmp_path):
    folder = tmp_path / "faq"
    built = run_cli("index", EXAMPLES / "faq_en.csv", "--index", folder, "--text-field", "question",
                    "--group-field", "group", "--json", check=True)
    report = json.loads(built.stdout)
    assert (report["added"], report["documents"], report["vectors"]) == (50, 50, 50)
    assert "indexing: 50/50" in built.stderr  # plain progress lines when stderr is not a terminal

    answered = run_cli("query", folder, "I can't remember my password", "how much is shipping?", "-k", "3",
                       "--json", check=True)
    lines = [json.loads(line) for line in answered.stdout.splitlines()]
    assert [line["question"] for line in lines] == ["I can't remember my password", "how much is shipping?"]
    first = lines[0]["hits"][0]
    assert first["group"] == "g-password-reset" and first["rank"] == 1 and 0.5 < first["score"] <= 1.0
    assert "reset link" in first["fields"]["answer"]
    assert len(lines[1]["hits"]) == 3

    table = run_cli("query", folder, "I can't remember my password", "-k", "1", check=True)
    assert "g-password-reset" in table.stdout and "score" in table.stdout

    info = json.loads(run_cli("info", folder, "--json", check=True).stdout)
    assert info["documents"] == 50 and info["recipe"]["layer"] == 6 and info["recipe"]["pooling"] == "mean"
    assert info["model"] == "sentence-transformers/all-MiniLM-L6-v2" and "as the sentence-transformers" in info["recipe_reason"]


def test_questions_from_stdin_and_file(faq_index, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("refund\n\ntrack my order\n", encoding="utf-8")
    from_file = run_cli("query", faq_index, "--file", questions, "--json", "-k", "1", check=True)
    from_stdin = run_cli("query", faq_index, "-", "--json", "-k", "1", input="refund\ntrack my order\n", check=True)
    assert from_file.stdout == from_stdin.stdout
    assert len(from_file.stdout.splitlines()) == 2


def test_bad_input_is_one_line_naming_file_and_line(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text('id,question\n1,"fine"\n2,\n', encoding="utf-8")
    result = run_cli("index", data, "--index", tmp_path / "index", "--text-field", "question")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {data}:3: empty text in 'question' (nothing was written; --on-error skip leaves such rows out)"]


def test_query_against_a_folder_that_is_not_an_index(tmp_path):
    result = run_cli("query", tmp_path, "hello")
    assert result.returncode == 4  # IndexMissing
    assert result.stderr.strip() == f"error: {tmp_path} is not a bertdex index (no bertdex.db in it)"


def test_unreachable_hub_model_is_one_line(tmp_path):
    data = tmp_path / "faq.txt"
    data.write_text("hello\n", encoding="utf-8")
    result = run_cli("index", data, "--index", tmp_path / "index", "--model", "bert-base-multilingual-cased")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not be fetched from the Hugging Face hub" in lines[0]
