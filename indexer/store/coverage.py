"""Warnings about text the model cannot read well: many [UNK] tokens, or Hangul split into jamo.

An uncased English BERT (the bundled all-MiniLM-L6-v2 included) strips accents by decomposing
text (NFD), which turns every Hangul syllable into jamo pieces; its vectors then carry little of
the Korean meaning, and keyword or hybrid search does better. Only the tokenizer is loaded here
(its tokenizer.json by the `tokenizers` library, so `bertdex info` imports no transformers).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from indexer.store.keywords import hangul_syllable, has_jamo

WARNINGS_MEMO = Path.home() / ".cache" / "bertdex" / "warnings"
UNK_SHARE = 0.05
HANGUL_SHARE = 0.1
SAMPLE = 2000


def tokenizer_warnings(tokenizer, texts: list[str]) -> list[str]:
    """Warnings for `texts` under `tokenizer` (a Hugging Face tokenizer); empty when all is well.

    tokenizer_warnings(uncased_bert, ["비밀번호를 잊었어요"]) -> ['... splits Hangul into jamo ...']
    """
    warnings = []
    unk = tokenizer.unk_token_id
    pieces = [tokenizer.tokenize(text)[:512] for text in texts]
    total = sum(len(p) for p in pieces)
    unknown = sum(piece == tokenizer.unk_token for p in pieces for piece in p) if unk is not None else 0
    if total and unknown / total > UNK_SHARE:
        warnings.append(f"{unknown / total:.0%} of the tokens are {tokenizer.unk_token}: this model's vocabulary does not "
                        "cover this text; rebuild with a model trained on its language (--model multilingual-e5-small "
                        "covers about 100 languages), or search with --mode keyword")
    korean = sum(hangul_syllable(text) is not None for text in texts)
    if texts and korean / len(texts) >= HANGUL_SHARE and has_jamo("".join(tokenizer.tokenize("한국어"))):
        warnings.append(f"{korean / len(texts):.0%} of the entries are Korean, and this model's tokenizer splits Hangul into "
                        "jamo (an uncased model strips accents): dense vectors will match Korean poorly; rebuild with "
                        "--model multilingual-e5-small (ko-question-pair MRR@10 0.71 against 0.25, bench/models.py), "
                        "or search with --mode keyword/hybrid")
    return warnings


def index_warnings(folder: str | Path, sample: int = SAMPLE, memo: Path | None = WARNINGS_MEMO) -> list[str]:
    """tokenizer_warnings() for up to `sample` entries of an index (evenly spread), with its model's tokenizer.

    Loading a tokenizer costs ~0.6 s for multilingual-e5-small's 250k pieces, on every `bertdex info`: the
    warnings are kept in `memo` (None: none) under the folder, its generation and its models' checksums,
    and found again until a write commits a new generation."""
    from indexer.store.folder import check_index_folder, connect, read_manifest

    folder = check_index_folder(Path(folder))
    db = connect(folder, readonly=True)
    try:
        manifest = read_manifest(db, folder)
        count = db.execute("SELECT count(*) FROM documents").fetchone()[0]
        step = max(1, count // sample)
        texts = [row[0] for row in db.execute("SELECT text FROM documents WHERE id % ? = 0 LIMIT ?", [step, sample])]
    finally:
        db.close()
    recipe = manifest.recipe
    key = json.dumps([str(folder.resolve()), manifest.generation, count, sample, recipe.model_checksum,
                      recipe.companion.model_checksum if recipe.companion else None])
    remembered = memo / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json" if memo is not None else None
    try:
        if remembered is not None:
            return json.loads(remembered.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    warnings = _warnings(recipe, texts)
    if warnings is None:
        return []
    if remembered is not None:
        try:
            remembered.parent.mkdir(parents=True, exist_ok=True)
            partial = remembered.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps(warnings), encoding="utf-8")
            os.replace(partial, remembered)
        except OSError:
            pass  # an unwritable cache: load the tokenizer again next time
    return warnings


def _warnings(recipe, texts: list[str]) -> list[str] | None:
    """The warnings, or None when a model is not reachable here (nothing to say, nothing to remember)."""
    from indexer.embed.models import resolve_model_folder

    found = []
    # with a companion model, a warning stands only when neither model reads the text
    for model in [recipe.model] + ([recipe.companion.model] if recipe.companion else []):
        try:
            tokenizer = load_tokenizer(resolve_model_folder(model))
        except Exception:  # the model is not reachable here: nothing to say about its tokenizer
            return None
        found.append(tokenizer_warnings(tokenizer, texts))
    return found[0] if all(found) else []


def load_tokenizer(folder: Path):
    """The model's tokenizer.json by the `tokenizers` library alone (no transformers import), else transformers'."""
    from indexer.embed.tokenizer import FastTokenizer, has_fast_tokenizer

    if has_fast_tokenizer(folder):
        return FastTokenizer(folder)
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
