"""The default model as a new user gets it (no --model, no $BERTDEX_MODEL): Korean works out of the box."""

from __future__ import annotations

import json
import os
import subprocess


import pytest

from conftest import BERTDEX, EXAMPLES, ROOT

pytestmark = pytest.mark.slow


def bertdex(*args):
    environment = {name: value for name, value in os.environ.items() if name != "BERTDEX_MODEL"}
    environment.update(HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([*BERTDEX, *map(str, args)], capture_output=True, text=True, env=environment,
                          timeout=900, cwd=ROOT)


def test_an_english_collection_gets_the_english_model_and_says_why(tmp_path):
    folder = tmp_path / "faq-en"
    built = bertdex("index", folder, EXAMPLES / "faq_en.csv", "--text-field", "question", "-q")
    assert built.returncode == 0, built.stderr
    info = json.loads(bertdex("info", folder, "--json").stdout)
    assert info["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["settings"]["model_reason"].startswith("auto: 100% of the entries are plain English")


def test_a_korean_collection_gets_the_multilingual_model_and_the_sample_question_finds_forgot_password(tmp_path):
    folder = tmp_path / "faq-ko"
    built = bertdex("index", folder, EXAMPLES / "faq_ko.csv", "--text-field", "question",
                    "--group-field", "group", "-q")
    assert built.returncode == 0, built.stderr
    info = json.loads(bertdex("info", folder, "--json").stdout)
    assert info["model"] == "multilingual-e5-small"
    assert "Hangul" in info["settings"]["model_reason"]
    assert "warning" not in built.stderr  # the model reads Korean: no jamo warning
    answer = json.loads(bertdex("query", folder, "비밀번호가 생각이 안 나요", "-k", "3", "--json").stdout.splitlines()[0])
    hits = answer.get("hits", answer)
    assert hits[0]["group"] == "g-password-reset"  # "forgot password", not "change password" (ko-003, g-change-password)


def test_the_models_command_says_which_is_the_default_for_which_language():
    listed = {m["name"]: m for m in map(json.loads, bertdex("models", "--json").stdout.splitlines())}
    assert listed["all-MiniLM-L6-v2"]["default_for"] == "English"
    assert listed["multilingual-e5-small"]["default_for"] == "other languages"
    assert set(listed) == {"all-MiniLM-L6-v2", "multilingual-e5-small"}
