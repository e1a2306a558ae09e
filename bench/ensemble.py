"""Would a score ensemble of the two bundled models answer better? w x the index model's cosine + (1 - w) x the other's.

    python bench/ensemble.py --work DIR bertfaq-covidfaq deepset-covid-qsim banking77 ko-question-pair

Reads the indexes `python bench/quality.py --work DIR` built (each set with its default model), embeds
entries and labelled queries with both bundled models as `bertdex tune` does (first window of a long
question), scores each entry by its best window, and prints MRR@10 (ranked and judged as tune ranks:
group collapse, candidate pools) for w in 1 (the index's model), 0 (the other), 0.3, 0.5, 0.7, dense
and hybrid (score fusion with the keyword side at dense weight 0.5, 0.7, 0.9). The experiment that
led to pairs of models (indexer.embed.pair, `bertdex index --companion`), which `bertdex tune` now
measures itself; here the second model scores each entry by its own windows, a pair by the first's.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np
from indexer.store.folder import connect, read_manifest
from indexer.ingest.embedding import embed_questions
from search import keyword
from search.quality.evaluate import load_qrels, load_queries
from search.quality.heldout import labelled_questions, read_documents
from search.quality.trials import Candidate, _Judge, entry_vectors, keyword_lists
from search.quality.tune import full_encoder, prepare_other_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of bench/quality.py")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("sets", nargs="+")
    args = parser.parse_args()
    for name in args.sets:
        folder = args.work / name
        beir = args.data / name / "beir"
        db = connect(folder, readonly=True)
        manifest, documents = read_manifest(db, folder), read_documents(db)
        asked = labelled_questions(documents, load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels.tsv"), 10**9, False)
        words = keyword_lists(db, asked.items)
        db.close()
        texts = [q.text for q in asked.items]
        sides = []
        own = full_encoder(None, manifest.recipe)
        sides.append((own, manifest))
        for other in prepare_other_models(manifest, documents):
            sides.append((other.encoder, other.manifest))
        doc_ids = np.asarray([d["id"] for d in documents])
        index_of = {d: i for i, d in enumerate(doc_ids)}
        matrices = []
        for encoder, man in sides:
            r = man.recipe
            pas = entry_vectors(encoder, man, documents, [r.layer])
            qv = embed_questions(encoder, r, man.settings, texts, layers=[r.layer])
            first = np.unique(qv.owners, return_index=True)[1]  # first window of each question
            scores = qv.of(r.layer, r.pooling)[first] @ pas.of(r.layer, r.pooling).T
            doc_scores = np.full((len(texts), len(doc_ids)), -np.inf, dtype=np.float32)
            cols = np.asarray([index_of[o] for o in pas.owners])
            for c in np.unique(cols):
                doc_scores[:, c] = scores[:, cols == c].max(axis=1)
            matrices.append(doc_scores)
        judge = _Judge(documents, asked.items)
        def lists(S):
            out = []
            for row in S:
                top = np.argsort(-row)[:50]
                out.append([(int(doc_ids[i]), float(row[i]), None) for i in top])
            return out
        res = {}
        for w in (1.0, 0.0, 0.3, 0.5, 0.7):
            S = w * matrices[0] + (1 - w) * matrices[1]
            dense = lists(S)
            res[f"dense w_own={w}"] = judge.trial(Candidate(0, "x", "dense"), dense).metrics["mrr@10"]
            for hw in (0.5, 0.7, 0.9):
                fused = [keyword.fuse(d, k, hw, "score") for d, k in zip(dense, words)]
                res[f"hybrid{hw} w_own={w}"] = judge.trial(Candidate(0, "x", "dense"), fused).metrics["mrr@10"]
        print(name, manifest.recipe.model, {k: round(v, 4) for k, v in sorted(res.items(), key=lambda kv: -kv[1])[:8]}, flush=True)
        print("   own dense", round(res["dense w_own=1.0"], 4), "other dense", round(res["dense w_own=0.0"], 4), flush=True)


if __name__ == "__main__":
    main()
