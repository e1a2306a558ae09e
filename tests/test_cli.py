"""The `bertdex` command as a user runs it: real subprocesses, real model, real files."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import EXAMPLES, run_cli


def test_index_query_info_end_to_end(tmp_path):
    folder = tmp_path / "faq"
    built = run_cli("index", folder, EXAMPLES / "faq_en.csv", "--text-field", "question",
                    "--group-field", "group", "--json", check=True)
    report = json.loads(built.stdout)
    assert (report["added"], report["documents"], report["vectors"]) == (50, 50, 50)
    assert built.stderr.splitlines()[0] == "indexing: 50/50"  # plain progress lines when stderr is not a terminal

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
    file_stdin = run_cli("query", faq_index, "--file", "-", "--json", "-k", "1", input="refund\ntrack my order\n", check=True)
    assert from_file.stdout == from_stdin.stdout == file_stdin.stdout
    assert len(from_file.stdout.splitlines()) == 2


def test_bad_input_is_one_line_naming_file_and_line(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text('id,question\n1,"fine"\n2,\n', encoding="utf-8")
    result = run_cli("index", tmp_path / "index", data, "--text-field", "question")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {data}:3: empty text in 'question' (nothing was written; --on-error skip leaves such rows out)"]


def test_the_old_order_still_works_with_a_one_line_note(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text('id,question\n1,"fine"\n2,\n', encoding="utf-8")
    result = run_cli("index", data, "--index", tmp_path / "index")  # fails at row 3, before the model loads
    assert result.returncode == 1
    note, error = result.stderr.strip().splitlines()
    assert note == (f"note: `bertdex index DATA --index DIR` is the old order; write `bertdex index {tmp_path / 'index'} "
                    f"{data}` (the old order goes in the next version)")
    assert error.startswith(f"error: {data}:3: empty text")
    both = run_cli("index", tmp_path / "a", data, "--index", tmp_path / "b")
    assert both.returncode == 2 and "give the index folder once" in both.stderr


def test_query_against_a_folder_that_is_not_an_index(tmp_path):
    result = run_cli("query", tmp_path, "hello")
    assert result.returncode == 4  # IndexMissing
    assert result.stderr.strip() == f"error: {tmp_path} is not a bertdex index (no bertdex.db in it)"


def test_unreachable_hub_model_is_one_line(tmp_path):
    data = tmp_path / "faq.txt"
    data.write_text("hello\n", encoding="utf-8")
    result = run_cli("index", tmp_path / "index", data, "--model", "bert-base-multilingual-cased")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not be fetched from the Hugging Face hub" in lines[0]


# -- the CLI's manners (issue 14) -------------------------------------------------------------------


def test_version_and_flags_without_a_placeholder():
    assert run_cli("--version", check=True).stdout.strip() == "bertdex 0.1.0"
    for command in ("index", "query", "tutorial tokens"):
        shown = run_cli(*command.split(), "--help", check=True).stdout
        assert "--json" in shown and "<bool>" not in shown


def test_a_bad_choice_lists_the_valid_ones_before_any_model_is_looked_at(tmp_path):
    result = run_cli("index", tmp_path / "index", tmp_path / "missing.csv", "--model", tmp_path / "no-model",
                     "--precision", "fp16")
    assert result.returncode == 2
    assert "'fp16' is not one of 'auto', 'fp32', 'bf16'" in result.stderr and "no-model" not in result.stderr
    assert not (tmp_path / "index").exists()


def test_choices_are_the_librarys():
    import cli
    from indexer.embed.recipe import POOLINGS
    from indexer.ingest.build import ON_ERROR
    from indexer.ingest.readers import FORMATS
    from indexer.store.ann import INDEX_TYPES
    from indexer.tutorial.words import MERGES, STRATEGIES
    from search.searcher import MODES

    for choice, values in ((cli.Pooling, POOLINGS), (cli.OnError, ON_ERROR), (cli.Format, FORMATS),
                           (cli.IndexType, INDEX_TYPES), (cli.Strategy, STRATEGIES), (cli.Merge, MERGES),
                           (cli.Mode, MODES)):
        assert tuple(member.value for member in choice) == tuple(values)


def test_query_file_and_weight_errors_are_one_line(faq_index_master, tmp_path):
    missing = run_cli("query", faq_index_master, "--file", tmp_path / "questions.txt")
    assert (missing.returncode, missing.stderr) == (3, f"error: {tmp_path / 'questions.txt'}: no such file\n")
    for weight in ("3", "nan"):  # -1 and the rest: tests/test_manners.py
        refused = run_cli("query", faq_index_master, "refund", "--mode", "hybrid", "--weight", weight)
        assert refused.returncode == 2  # out of range: a usage error (indexer.options)
        assert refused.stderr.strip().splitlines() == [
            f"error: --weight {float(weight)}: the hybrid weight must be between 0 and 1 (the dense side's share)"]


def test_small_adds_print_no_rate(capsys):
    import cli
    from indexer.ingest.build import BuildReport

    cli.print_report(BuildReport("faq", 1, 0, 49, 0, 50, 50, 0, 0, 6.0), as_json=False)
    assert capsys.readouterr().out == "faq: 1 added, 0 updated, 49 unchanged; 50 entries, 50 vectors; 6.0s\n"
    cli.print_report(BuildReport("faq", 600, 0, 0, 0, 600, 600, 0, 0, 3.0), as_json=False)
    assert capsys.readouterr().out.endswith("3.0s (200 entries/s)\n")


def test_excerpt_starts_near_the_matching_window():
    import cli

    assert cli.excerpt("abcdefghij", (6, 8), 5) == ("…fghij", (2, 4))
    assert cli.excerpt("abcdefghij", None, 4) == ("abcd…", None)
    assert cli.excerpt("abc", (0, 2), 0) == ("abc", (0, 2))
    text = "x" * 500 + " the matching words " + "y" * 500
    shown, span = cli.excerpt(text, (500, 520), 80)
    assert len(shown) == 82 and shown[span[0]:span[1]] == " the matching words "


def test_duplicates_lists_rows_without_loading_a_model(faq_index_master):
    result = run_cli("duplicates", faq_index_master, "--threshold", "0.6", "--limit", "2", "--csv", check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "cosine,key_a,key_b,text_a,text_b" and len(lines) == 3
    assert float(lines[1].split(",")[0]) >= float(lines[2].split(",")[0]) >= 0.6
    assert "more not listed (--limit)" in result.stderr


@pytest.mark.slow
def test_stdin_semicolon_csv_question_and_answer_then_rows_out(tmp_path):
    data = ('id;question;answer;category\n'
            'b1;How do I export invoices?;"Open Reports.\n\nChoose Export.";billing\n'
            'b2;Can I pay by bank transfer?;Yes, within 14 days.;billing\n'
            's1;Where is my parcel?;See the tracking page.;shipping\n'
            'a1;How do I reset my password?;Use the reset link.;account\n')
    built = run_cli("index", tmp_path / "qa", "-", "-t", "question", "-t", "answer", "--json", input=data, check=True)
    assert json.loads(built.stdout)["documents"] == 4
    rows = run_cli("query", tmp_path / "qa", "export my invoices", "-k", "4", "--csv", "--fields", "key,answer",
                   "--where", "category=billing", "--where", "category=shipping", check=True).stdout
    table = list(csv.reader(io.StringIO(rows)))
    assert table[:2] == [["key", "answer"], ["b1", "Open Reports.\n\nChoose Export."]]  # the answer's lines kept
    assert {row[0] for row in table[1:]} == {"b1", "b2", "s1"}  # billing or shipping, not account
    wrong = run_cli("query", tmp_path / "qa", "export", "--where", "category=Billing", "--json")
    answer = json.loads(wrong.stdout)
    assert wrong.returncode == 1 and answer["answered"] is False and answer["reason"] == "filter_matched_nothing"
    assert answer["why"] == "no entry with category=Billing (values: account, billing, shipping)"


def test_option_values_convert_as_typers_own_pydantic_adapters_convert_them(tmp_path):
    """cli converts plain option values without pydantic (~0.3 s of a cold question); each value, right or wrong,
    must come out as typer's own adapter makes it, or fail with its message."""
    import typer
    import typer.main

    import cli

    (tmp_path / "a.csv").write_text("text\nx\n")
    values = ["3", "007", "+2", "-1", "0", "1.5", ".25", "1e3", "abc", "", "hybrid", "HYBRID", "keyword", "sq8",
              "fp32", str(tmp_path), str(tmp_path / "a.csv"), str(tmp_path / "missing"), 5, 0, 0.3, True]
    command = typer.main.get_command(cli.app)
    checked = 0
    for name in ("index", "query", "serve", "eval"):
        sub = command.commands[name]
        context = typer.Context(sub)
        for param in sub.params:
            if param.type_descriptor.annotation is bool:
                continue
            plain, typers = param.get_runtime_param(), cli._typer_runtime_param(param.type_descriptor)
            assert isinstance(plain, cli._PlainValues)
            for value in values + [(v,) for v in values[:3]] + [tuple(values[-6:-3])]:
                outcomes = []
                for runtime in (plain, typers):
                    try:
                        outcomes.append(("value", runtime.coerce(value, param, context)))
                    except Exception as error:
                        outcomes.append((type(error).__name__, str(error)))
                assert outcomes[0] == outcomes[1], (name, param.name, value)
                assert type(outcomes[0][1]) is type(outcomes[1][1]), (name, param.name, value)
                checked += 1
    assert checked > 500


def test_a_command_is_built_alone_with_the_same_options_and_anything_else_gets_the_whole_app():
    import typer.main

    import cli

    whole = typer.main.get_command(cli.app)
    for name in ("query", "eval", "serve", "info"):
        alone = typer.main.get_command(cli.app_for([name, "x"]))
        assert list(alone.commands) == [name]
        assert [p.opts for p in alone.commands[name].params] == [p.opts for p in whole.commands[name].params]
        assert [p.opts for p in alone.params] == [p.opts for p in whole.params]  # --version
    for argv in ([], ["--help"], ["tutorial", "tokens"], ["quer"], ["--version"]):
        assert cli.app_for(argv) is cli.app
    result = run_cli("quer", "x")
    assert result.returncode == 2 and "Did you mean 'query'?" in result.stderr
