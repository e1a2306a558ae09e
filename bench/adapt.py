"""Adapting the model to a help desk: does tune with adaptation answer new questions better than without it?

    python bench/adapt.py [--data ../shared/data] [--sets NAME,...] [--work bench/out/adapt] [--steps N]
                          [--banking-every 4] [--json]

bertfaq-covidfaq, deepset-covid-qsim, ko-question-pair: the labelled queries are split in halves (ids
in a fixed-seed shuffle, as bench/quality.py); `bertdex tune --adapt` runs on half A (it stores its
choice, re-embedding the index with the adapted model when the gate lets it), and half B is scored.
banking77: from its groups only (its title, the intent label, is a stored field that groups the
entries, never embedded); tune runs on the groups and every (kept) labelled query is scored. To fit 2
shared cores banking77 keeps every `--banking-every`-th entry and every third query (qrels restricted
to the kept entries).

Columns, MRR@10 on the scored queries: best single (the best of dense / keyword / hybrid score 0.5 of
the index's own model, picked on the scored half itself: an oracle), tune without adaptation (its rule
and gate on half A, the choice scored on B), tune with adaptation (the index as tune stored it,
evaluated by `bertdex eval` in a fresh process), the adapted model's dense figure where tune chose it;
the light map (a linear map on the frozen model's vectors, trained on the same pairs with the same loss)
for comparison; the pairs used and training time. Base vectors for the light map are cached in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {  # name -> (fields to embed, group field: tune on groups only)
    "bertfaq-covidfaq": (["title", "text"], None),
    "deepset-covid-qsim": (["text"], None),
    "ko-question-pair": (["text"], None),
    "banking77": (["text"], "title"),
}
SPLIT_SEED = 11


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "adapt")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: tune's, by the pairs' count)")
    parser.add_argument("--banking-every", type=int, default=4, help="banking77: keep every N-th entry")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    for name in args.sets.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SETS)}")
        rows.append(measure(name, args.data / name / "beir", args.work / name, args.steps, args.banking_every))
        say(f"{name}: {json.dumps(rows[-1])}")
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    print(f"\ncommand: python {shlex.join(sys.argv)}  ({time.perf_counter() - started:.0f} s, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    print(table(rows))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_set(name: str, beir: Path, every: int):
    """(corpus rows, queries, qrels) of a set, banking77 thinned."""
    corpus = [json.loads(line) for line in (beir / "corpus.jsonl").open(encoding="utf-8") if line.strip()]
    queries = {r["_id"]: r["text"] for r in map(json.loads, (beir / "queries.jsonl").open(encoding="utf-8"))}
    qrels: dict[str, dict[str, float]] = {}
    for line in (beir / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query, doc, score = line.split("\t")[:3]
        if float(score) > 0:
            qrels.setdefault(query, {})[doc] = float(score)
    if name == "banking77":
        corpus = corpus[::every]
        kept = {r["_id"] for r in corpus}
        qrels = {q: {d: s for d, s in rel.items() if d in kept} for q, rel in list(qrels.items())[::3]}
        qrels = {q: rel for q, rel in qrels.items() if rel}
    return corpus, {q: queries[q] for q in qrels if q in queries}, {q: r for q, r in qrels.items() if q in queries}


def build(name: str, corpus: list[dict], folder: Path) -> None:
    from indexer import build_index

    if (folder / "bertdex.db").is_file():
        return
    source = folder.parent / f"{name}.corpus.jsonl"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with source.open("w", encoding="utf-8") as handle:
        for r in corpus:
            handle.write(json.dumps({"id": r["_id"], "title": r.get("title", ""), "text": r["text"]}, ensure_ascii=False) + "\n")
    build_index(source, folder, text_fields=SETS[name][0], id_field="id")


def write_labels(queries: dict, qrels: dict, stem: Path) -> tuple[Path, Path]:
    q, r = stem.with_suffix(".queries.jsonl"), stem.with_suffix(".qrels.tsv")
    q.write_text("".join(json.dumps({"_id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in queries.items()), encoding="utf-8")
    r.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{k}\t{d}\t{s:g}\n" for k, rel in qrels.items() for d, s in rel.items()),
                 encoding="utf-8")
    return q, r


def measure(name: str, beir: Path, work: Path, steps: int | None, every: int) -> dict:
    from search.quality.choose import decide, fold_ids
    from search.quality.tune import tune_index

    started = time.perf_counter()
    corpus, queries, qrels = read_set(name, beir, every)
    base = work / "base"
    build(name, corpus, base)
    group_field = SETS[name][1]
    ids = sorted(qrels)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    if group_field:  # groups only: nothing labelled trains; every kept query is scored
        half_a, half_b = [], ids
    else:
        half_a, half_b = sorted(ids[i] for i in order[: len(ids) // 2]), sorted(ids[i] for i in order[len(ids) // 2 :])
    scored_q, scored_r = write_labels({q: queries[q] for q in half_b}, {q: qrels[q] for q in half_b}, work / "half-b")

    tuned = work / "tuned"
    shutil.rmtree(tuned, ignore_errors=True)
    shutil.copytree(base, tuned)
    say(f"{name}: tune --adapt on {'the groups' if group_field else f'half A ({len(half_a)} queries)'}")
    labels = dict(queries={q: queries[q] for q in half_a}, qrels={q: qrels[q] for q in half_a}) if half_a else {}
    report = tune_index(tuned, group_field=group_field, adapt=True, adapt_steps=steps, progress=say, **labels)
    measured = report.measured
    trials = measured.trials
    plain_rows = [i for i, t in enumerate(trials) if t.candidate.model != "adapted"]
    mrr = np.vstack([t.per_query for t in trials])[plain_rows]
    ndcg = np.vstack([t.per_query_ndcg for t in trials])[plain_rows]
    without = decide(mrr, ndcg, 0, fold_ids(list(measured.keys)), list(measured.simple))
    chosen_without = trials[plain_rows[without.chosen]].candidate
    chosen_with = report.chosen.candidate

    say(f"{name}: every candidate on the scored queries ({len(half_b)})")
    scored = tune_index(base, queries={q: queries[q] for q in half_b}, qrels={q: qrels[q] for q in half_b}, store=False)
    on_b = {t.candidate: t.metrics["mrr@10"] for t in scored.measured.trials}
    singles = {c.label(): v for c, v in on_b.items() if c.model is None and c.companion is None
               and (c.layer, c.pooling) == (scored.current.candidate.layer, scored.current.candidate.pooling)
               and (c.mode != "hybrid" or (c.fusion == "score" and abs(c.weight - 0.5) < 1e-9))}
    best_label, best_single = max(singles.items(), key=lambda item: item[1])

    say(f"{name}: the stored index answers the scored queries from a fresh process (bertdex eval)")
    evaluated = subprocess.run([sys.executable, str(ROOT / "cli.py"), "eval", str(tuned), "--queries", str(scored_q),
                                "--qrels", str(scored_r), "--json"], capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    if evaluated.returncode:
        raise SystemExit(f"bertdex eval failed: {evaluated.stderr.strip()[-400:]}")
    fresh = json.loads(evaluated.stdout)["mrr@10"]
    adapted_trial = next(t for t in trials if t.candidate.model == "adapted" and t.candidate.mode == "dense") \
        if any(t.candidate.model == "adapted" for t in trials) else None
    info = _manifest_adapted(tuned)
    row = {"set": name, "documents": len(corpus), "tuned on": "groups" if group_field else f"{len(half_a)} queries",
           "scored": len(half_b), "best single": best_single, "best single mode": best_label,
           "tune without adaptation": on_b.get(chosen_without, float("nan")), "choice without": chosen_without.label(),
           "tune with adaptation": fresh, "choice with": chosen_with.label(),
           "adapted chosen": chosen_with.model == "adapted" and report.decision.change,
           "adapted cross-fitted on A": adapted_trial.metrics["mrr@10"] if adapted_trial else None,
           "gain": report.decision.gain, "p": report.decision.p_value,
           "pairs": info.get("pairs") if info else None, "training seconds": info.get("seconds") if info else None,
           "sources": info.get("sources") if info else None, "steps": info.get("steps") if info else None,
           "tune seconds": report.seconds}
    row.update(light_map(base, name, work, queries, qrels, half_a, half_b, group_field))
    row["seconds"] = time.perf_counter() - started
    return row


def _manifest_adapted(folder: Path) -> dict | None:
    from indexer.store.folder import open_manifest

    return open_manifest(folder).settings.adapted


def light_map(folder: Path, name: str, work: Path, queries, qrels, half_a, half_b, group_field) -> dict:
    """A linear map W (identity to start) on the frozen model's vectors, trained on the same pairs with the
    same loss (in-batch negatives, scale 20), applied to questions and entries; MRR@10 on the scored half."""
    import torch

    from indexer.ingest.embedding import Vectors, embed_entries, embed_questions
    from indexer.store.settings import IndexSettings
    from indexer.store.folder import connect, read_manifest
    from search.quality.adapt import group_pairs, labelled_pairs
    from search.quality.heldout import labelled_questions, read_documents
    from search.quality.trials import _dense_lists, _Judge, entry_vectors
    from search.quality.tune import full_encoder

    db = connect(folder, readonly=True)
    manifest, documents = read_manifest(db, folder), read_documents(db)
    db.close()
    recipe, key = manifest.recipe, (manifest.recipe.layer, manifest.recipe.pooling)
    cache = work / "base-vectors.npz"
    scored = labelled_questions(documents, {q: queries[q] for q in half_b}, {q: qrels[q] for q in half_b}, 10**9, False)
    train_q = labelled_questions(documents, {q: queries[q] for q in half_a}, {q: qrels[q] for q in half_a}, 10**9, False) \
        if half_a else None
    pairs = labelled_pairs(train_q, documents) if train_q else group_pairs(documents, group_field)
    asks, answers = sorted({p.pair.question for p in pairs}), sorted({p.pair.entry for p in pairs})
    if cache.is_file():
        saved = np.load(cache, allow_pickle=True)
        passages = Vectors({key: saved["passages"]}, saved["owners"], saved["spans"])
        asked = Vectors({key: saved["asked"]}, saved["asked_owners"], saved["asked_spans"])
        ask_vectors = dict(zip(saved["asks"].tolist(), saved["ask_vectors"]))
        answer_vectors = dict(zip(saved["answers"].tolist(), saved["answer_vectors"]))
    else:
        encoder = full_encoder(None, recipe)
        passages = entry_vectors(encoder, manifest, documents, [recipe.layer])
        asked = embed_questions(encoder, recipe, manifest.settings, [q.text for q in scored.items], layers=[recipe.layer])
        # one vector per text: questions as questions (their last tokens), entries as entries (their first)
        ask_vectors = dict(zip(asks, embed_questions(encoder, recipe, manifest.settings, asks, layers=[recipe.layer],
                                                     long_questions="tail").of(*key)))
        answer_vectors = dict(zip(answers, embed_entries(encoder, recipe, IndexSettings(window=False), answers,
                                                         layers=[recipe.layer]).of(*key)))
        np.savez_compressed(cache, passages=passages.of(*key), owners=passages.owners, spans=passages.spans,
                            asked=asked.of(*key), asked_owners=asked.owners, asked_spans=asked.spans,
                            asks=np.asarray(asks, dtype=object), ask_vectors=np.vstack([ask_vectors[t] for t in asks]),
                            answers=np.asarray(answers, dtype=object),
                            answer_vectors=np.vstack([answer_vectors[t] for t in answers]))
    started = time.perf_counter()
    torch.manual_seed(27)
    q = torch.tensor(np.vstack([ask_vectors[p.pair.question] for p in pairs]))
    e = torch.tensor(np.vstack([answer_vectors[p.pair.entry] for p in pairs]))
    dim = q.shape[1]
    weight = torch.nn.Parameter(torch.eye(dim))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    rng = np.random.default_rng(27)
    for _ in range(200):
        batch = torch.tensor(rng.choice(len(pairs), size=min(32, len(pairs)), replace=False))
        a = torch.nn.functional.normalize(q[batch] @ weight, dim=-1)
        b = torch.nn.functional.normalize(e[batch] @ weight, dim=-1)
        loss = torch.nn.functional.cross_entropy(20 * a @ b.T, torch.arange(len(batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    w = weight.detach().numpy()

    def mapped(vectors):
        out = vectors.of(*key) @ w
        return Vectors({key: out / np.linalg.norm(out, axis=1, keepdims=True)}, vectors.owners, vectors.spans)

    judge = _Judge(documents, scored.items)
    base = judge.trial(None, _dense_lists(passages, asked, *key, scored.items)).metrics["mrr@10"]
    light = judge.trial(None, _dense_lists(mapped(passages), mapped(asked), *key, scored.items)).metrics["mrr@10"]
    return {"dense (frozen)": base, "light map": light, "light map seconds": time.perf_counter() - started}


def table(rows: list[dict]) -> str:
    head = ["set", "docs", "tuned on", "scored", "best single", "tune without adaptation", "tune with adaptation",
            "with - best single", "dense (frozen)", "light map", "pairs (sources)", "steps", "training s", "choice with",
            "bench s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["set"], str(r["documents"]), r["tuned on"], str(r["scored"]), f"{r['best single']:.3f} ({r['best single mode']})",
            f"{r['tune without adaptation']:.3f}", f"**{r['tune with adaptation']:.3f}**",
            f"{r['tune with adaptation'] - r['best single']:+.3f}", f"{r['dense (frozen)']:.3f}", f"{r['light map']:.3f}",
            f"{r['pairs']} ({r['sources']})" if r["pairs"] else "-", str(r["steps"] or "-"),
            f"{r['training seconds']:.0f}" if r["training seconds"] else "-", r["choice with"], f"{r['seconds']:.0f}",
        ]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
