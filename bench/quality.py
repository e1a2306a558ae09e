"""Answer quality on the retrieval sets of ../shared/data: does tuning beat the best single mode on new questions?

    python bench/quality.py [--data ../shared/data] [--sets banking77,...] [--work DIR] [--json]

Each set's corpus is indexed as `bertdex index` does by default (the model chosen by the entries'
language: all-MiniLM-L6-v2 for the English sets, multilingual-e5-small for ko-question-pair):
bertfaq-covidfaq embeds title + text, banking77 embeds text only (its title is the intent label: kept
as a stored field, never embedded), the others text. Every tuning candidate `bertdex tune` tries (the
index's model and the other bundled one) is measured once on all the set's labelled queries (in
memory, ranking as the Searcher does; the dense figure is checked against the real Searcher). Then the queries are split in two halves (fixed seed): `bertdex tune`'s rule (5-fold
cross-validation and the significance gate of search.quality.choose) chooses on one half and is
scored on the other, and the other way round. "best single" is the best of dense / keyword / hybrid
score 0.5 / hybrid rank 0.5 of the index's model over all the set's queries (each scored once, as the tuned figure is);
"per half (oracle)" picks the best of them on each scoring half itself. The gain's interval is a
paired bootstrap over all queries. "no labels" (banking77): the rule run on entries sharing an intent
label, scored on all labelled queries. Figures are MRR@10. `--saved` re-scores the rule on the
per-query figures a run saved in --work, without indexing or measuring again.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {  # name -> (fields to embed, group field for tuning without labels)
    "bertfaq-covidfaq": (["title", "text"], None),
    "deepset-covid-qsim": (["text"], None),
    "banking77": (["text"], "title"),
    "ko-question-pair": (["text"], None),
}
SINGLE = {"dense": ("dense", None, None), "keyword": ("keyword", None, None),
          "hybrid score 0.5": ("hybrid", 0.5, "score"), "hybrid rank 0.5": ("hybrid", 0.5, "rank")}
SPLIT_SEED = 11


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the data sets (default: ../shared/data from the repository)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    parser.add_argument("--work", type=Path, default=None, help="folder for the indexes (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per set")
    parser.add_argument("--saved", action="store_true",
                        help="score the choosing rule again on the per-query figures a run saved in --work (no indexing)")
    args = parser.parse_args()
    if args.saved:
        rows = [from_saved(name, args.work, args.data / name / "beir") for name in args.sets.split(",")]
        print(f"command: python {shlex.join(sys.argv)}")
        print(table(rows))
        return

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bertdex-quality-"))
    rows = []
    for name in args.sets.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SETS)}")
        rows.append(measure(name, args.data / name / "beir", work / name))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"command: python {shlex.join(sys.argv)}  ({time.perf_counter() - started:.0f} s, {platform.processor() or 'cpu'})")
    print(table(rows))


def build(name: str, beir: Path, folder: Path) -> int:
    from indexer import build_index

    corpus = folder.parent / f"{name}.corpus.jsonl"
    folder.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with corpus.open("w", encoding="utf-8") as handle:
        for line in (beir / "corpus.jsonl").open(encoding="utf-8"):
            record = json.loads(line)
            handle.write(json.dumps({"id": record["_id"], "title": record.get("title", ""), "text": record["text"]},
                                    ensure_ascii=False) + "\n")
            count += 1
    build_index(corpus, folder, text_fields=SETS[name][0], id_field="id", replace=folder.exists())
    return count


def measure(name: str, beir: Path, folder: Path) -> dict:
    from search.quality.evaluate import evaluate, load_qrels, load_queries
    from search.searcher import Searcher

    started = time.perf_counter()
    documents = build(name, beir, folder)
    queries, qrels = load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv")
    labelled, unlabelled = candidates(folder, queries, qrels, SETS[name][1])
    trials, recipe = labelled["trials"], labelled["recipe"]
    rule_rows = len(trials)  # what tune chooses among; the plain modes it does not try come after
    trials = trials + labelled["singles"]
    mrr = np.vstack([t.per_query for t in trials])
    ndcg = np.vstack([t.per_query_ndcg for t in trials])
    single = {label: index_of(trials, recipe, *spec) for label, spec in SINGLE.items()}
    searcher = Searcher(folder)
    checked = evaluate(searcher, queries, qrels, mode="dense").metrics["mrr@10"]
    searcher.close()
    row = {"set": name, "model": recipe.model, "documents": documents, "queries": mrr.shape[1],
           "dense via Searcher": checked, **{label: float(mrr[i].mean()) for label, i in single.items()}}
    np.savez_compressed(folder.parent / f"{name}.per-query.npz", mrr=mrr, ndcg=ndcg, plain=labelled["plain"],
                        labels=[t.candidate.label() for t in trials], keys=labelled["keys"],
                        single=[single[label] for label in SINGLE], rule_rows=rule_rows)  # to study other rules
    row.update(split_halves(mrr, ndcg, labelled["keys"], single, trials, labelled["plain"], rule_rows))
    if unlabelled is not None:
        chosen = unlabelled["trials"][unlabelled["decision"].chosen].candidate
        found = [i for i, t in enumerate(trials) if t.candidate == chosen]
        row["no labels"] = float(mrr[found[0]].mean()) if found else None
        row["no labels choice"] = chosen.label()
    row["seconds"] = time.perf_counter() - started
    print(f"{name}: {json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})}",
          file=sys.stderr, flush=True)
    return row


def from_saved(name: str, work: Path, beir: Path) -> dict:
    """A row from the per-query figures `measure` saved (the rule re-scored; no "no labels" column)."""
    saved = np.load(work / f"{name}.per-query.npz")
    labels = [str(label) for label in saved["labels"]]
    mrr, ndcg, simple = saved["mrr"], saved["ndcg"], [int(i) for i in saved["plain"]]
    single = dict(zip(SINGLE, (int(i) for i in saved["single"])))
    trials = [type("Saved", (), {"candidate": type("C", (), {"label": (lambda self, text=text: text)})()})() for text in labels]
    documents = sum(1 for _ in (beir / "corpus.jsonl").open(encoding="utf-8"))
    row = {"set": name, "documents": documents, "queries": mrr.shape[1],
           **{label: float(mrr[i].mean()) for label, i in single.items()}, "seconds": 0.0}
    rule_rows = int(saved["rule_rows"]) if "rule_rows" in saved else len(labels)
    row.update(split_halves(mrr, ndcg, [str(k) for k in saved["keys"]], single, trials, simple, rule_rows))
    return row


def candidates(folder: Path, queries, qrels, group_field):
    """Every candidate measured on all labelled queries (and on the groups of `group_field`, decided there)."""
    from indexer.store.folder import connect, read_manifest
    from search.quality.choose import decide, fold_ids
    from search.quality.heldout import group_questions, labelled_questions, read_documents
    from search.quality.trials import entry_vectors, keyword_lists, measure_all, tuned_layers
    from search.quality.tune import current_candidate, full_encoder, measure_trials, pair_of, prepare_other_models

    db = connect(folder, readonly=True)
    manifest, documents = read_manifest(db, folder), read_documents(db)
    asked = labelled_questions(documents, queries, qrels, 10**9, False)
    groups = group_questions(documents, group_field, 2000) if group_field else None
    words = keyword_lists(db, asked.items)
    group_words = keyword_lists(db, groups.items) if groups else None
    db.close()
    encoder = full_encoder(None, manifest.recipe)
    layers = tuned_layers(encoder, manifest.recipe, None)
    passages = entry_vectors(encoder, manifest, documents, layers)
    others = prepare_other_models(manifest, documents)
    pairs = [pair_of(other, current_candidate(manifest)) for other in others]
    trials, simple = measure_trials(encoder, manifest, documents, asked.items, words, layers, passages, others, pairs)
    # a plain mode tune does not try (rank fusion), measured for the "best single" column only
    singles = [t for t in measure_all(encoder, manifest, documents, asked.items, words, [manifest.recipe.layer], passages,
                                      fusions=("rank",))
               if t.candidate.mode == "hybrid" and (t.candidate.layer, t.candidate.pooling) == (manifest.recipe.layer, manifest.recipe.pooling)]
    labelled = {"trials": trials, "keys": [q.fold_key for q in asked.items], "plain": simple, "recipe": manifest.recipe,
                "singles": singles}
    if groups is None:
        return labelled, None
    group_trials, group_plain = measure_trials(encoder, manifest, documents, groups.items, group_words, layers,
                                               passages, others, pairs)
    decision = decide(np.vstack([t.per_query for t in group_trials]), np.vstack([t.per_query_ndcg for t in group_trials]),
                      0, fold_ids([q.fold_key for q in groups.items]), group_plain)
    return labelled, {"trials": group_trials, "decision": decision}


def index_of(trials, recipe, mode: str, weight, fusion) -> int:
    """The trial of the index's own recipe in this mode."""
    for i, trial in enumerate(trials):
        c = trial.candidate
        if (c.model, c.companion, c.layer, c.pooling, c.mode, c.weight, c.fusion) == (None, None, recipe.layer, recipe.pooling, mode, weight, fusion):
            return i
    raise KeyError((mode, weight, fusion))


def split_halves(mrr, ndcg, keys: list[str], single: dict, trials, simple: list[int], rule_rows: int) -> dict:
    """Choose on one half, score on the other, both ways: tuned vs the best single mode of each scoring half.

    The rule chooses among the first `rule_rows` trials (what tune tries)."""
    from search.quality.choose import decide, fold_ids, paired_test

    n = mrr.shape[1]
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    halves = [np.sort(order[: n // 2]), np.sort(order[n // 2 :])]
    tuned, ungated, oracle = np.zeros(n), np.zeros(n), np.zeros(n)
    choices = []
    for choose, score in (halves, halves[::-1]):
        decision = decide(mrr[:rule_rows, choose], ndcg[:rule_rows, choose], 0, fold_ids([keys[i] for i in choose]), simple)
        tuned[score] = mrr[decision.chosen, score]
        ungated[score] = mrr[decision.best, score]
        oracle[score] = mrr[max(single.values(), key=lambda i: mrr[i, score].mean()), score]
        choices.append(trials[decision.chosen].candidate.label() + ("" if decision.change else " (kept)"))
    label, index = max(single.items(), key=lambda item: mrr[item[1]].mean())  # each query scored once, held out
    best_single = mrr[index]
    p_value, interval = paired_test(tuned - best_single)
    return {"tuned": float(tuned.mean()), "tuned, no gate": float(ungated.mean()), "best single": float(best_single.mean()),
            "best single mode": label, "best single per half": float(oracle.mean()),
            "gain": float((tuned - best_single).mean()), "interval": interval, "p": p_value,
            "choices": " / ".join(choices)}


def table(rows: list[dict]) -> str:
    head = ["set", "model", "docs", "queries", "dense", "keyword", "hybrid score 0.5", "hybrid rank 0.5", "best single",
            "tuned (held-out halves)", "tuned - best single [95%]", "tuned, no gate", "best single per half (oracle)",
            "no labels", "choices (half 1 / half 2)", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        low, high = row["interval"]
        lines.append("| " + " | ".join([
            row["set"], row.get("model", "-").split("/")[-1], str(row["documents"]), str(row["queries"]), *(f"{row[k]:.3f}" for k in SINGLE),
            f"{row['best single']:.3f} ({row['best single mode']})", f"**{row['tuned']:.3f}**",
            f"{row['gain']:+.3f} [{low:+.3f}, {high:+.3f}]", f"{row['tuned, no gate']:.3f}", f"{row['best single per half']:.3f}",
            f"{row['no labels']:.3f} ({row['no labels choice']})" if row.get("no labels") else "-",
            row["choices"], f"{row['seconds']:.0f}",
        ]) + " |")
    gains = [row["gain"] for row in rows]
    lines.append(f"\nmean gain over the best single mode: {np.mean(gains):+.4f}; worst set: {min(gains):+.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
