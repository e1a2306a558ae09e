"""Writes that cost what they add: no-op writes commit nothing; a write adds one segment; merges fold them."""

from __future__ import annotations

from conftest import EXAMPLES, run_cli
from indexer import add_documents, delete_documents
from indexer.store.folder import open_manifest


def files(folder) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.name.startswith("vectors.")}


# -- no-op writes -------------------------------------------------------------------------------------


def test_an_add_of_unchanged_entries_commits_nothing(faq_index):
    before, written = open_manifest(faq_index), files(faq_index)
    report = add_documents(faq_index, EXAMPLES / "faq_en.csv", text_fields=["question"], group_field="group")
    assert (report.committed, report.unchanged, report.added, report.updated) == (False, 50, 0, 0)
    assert open_manifest(faq_index) == before and files(faq_index) == written


def test_a_delete_of_absent_keys_commits_nothing_and_says_so(faq_index):
    before, written = open_manifest(faq_index), files(faq_index)
    assert delete_documents(faq_index, ["nope", "nor-this"]) == (0, ["nope", "nor-this"])
    assert open_manifest(faq_index) == before and files(faq_index) == written
    result = run_cli("delete", faq_index, "nope", check=True)
    assert result.stdout.strip() == "deleted 0 entries; nothing changed, nothing written"
    assert open_manifest(faq_index).generation == before.generation
    result = run_cli("add", faq_index, EXAMPLES / "faq_en.csv", "--text-field", "question", "--group-field", "group",
                     check=True)
    assert "nothing changed (50 unchanged), nothing written; 50 entries, 50 vectors" in result.stdout
    assert open_manifest(faq_index) == before and files(faq_index) == written
    assert delete_documents(faq_index, ["en-001", "nope"]) == (1, ["nope"])
    assert open_manifest(faq_index).generation == before.generation + 1
