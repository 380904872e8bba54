"""Duplicate texts: exact (same text after case and whitespace folding) and near
(MinHash + LSH over character 4-grams of a near key's consonant skeleton, each candidate
verified by its true Jaccard).

Why characters and not word shingles: the texts lokal sees are short (the shipped tweets have
a median of 13 words) and one changed word removes up to three word 3-shingles. Why the
skeleton (`near_key`: standard spellings; `skeleton`: inner vowels dropped, words cut to 8
characters) and 4-grams: on the development half of `tools/audit_recall.py` (planted slang,
letter, word, punctuation and mixed edits of real tweets, 5 seeds x 60 per kind) the lowest
Jaccard of a planted copy rose from 0.59 (plain 5-grams) to 0.65, while the highest pair of
two different tweets in the whole shipped corpus fell from 0.56 to 0.53.

Why 0.6 by default: between those two. Every pair of distinct shipped texts at 0.6 or more (15)
is one tweet written twice, read by eye (tests/test_audit.py).
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import numpy as np

from lokal.audit.groups import groups_from_pairs

NGRAM = 4
SKELETON_CHARS = 8
NUM_PERM = 128
URL_RE = re.compile(r"https?://\S+|www\.\S+")
MENTION_RE = re.compile(r"@\w[\w.]*|<[a-z_]+>")  # incl. anonymised placeholders: <username>, <provider_name>
# Emoticons, whose letters would otherwise stay as words: ":v", ":D", "xD", ":p", ";)", "=))", ":'(".
EMOTICON_RE = re.compile(r"(?<![\w:;=])(?:(?:[:;=]['\-^]?|x)(?:[dpv3o]|[()\[\]/\\|*]+))+(?![\w'])")
NON_WORD_RE = re.compile(r"[\W_]+")
RUN_RE = re.compile(r"([^\W\d_])\1+")  # a letter written twice or more: "bangeeet", "kerennn"
STRETCH_RE = re.compile(r"([^\W\d_])\1{2,}")  # three or more: stretched for emphasis, never spelling
REDUPLICATED_RE = re.compile(r"([^\W\d_]{2,})2")  # "anak2" for "anak-anak"
# Where the slang dictionary stops at an informal standard word that means the same as a formal
# one ("ga", "gak", "nggak" -> "enggak"; "tdk" -> "tidak"): one key for both.
SAME_WORDS = {"enggak": "tidak"}
INNER_VOWEL_RE = re.compile(r"(?<=[^\W\d_])[aiueo]")  # a vowel after a letter: not a word's first


def exact_key(texts):
    """The exact-duplicate key, the same one training's `dedup` uses: lowercased,
    whitespace runs folded to one space (a pandas Series in, a Series out)."""
    from lokal.data.tables import fold_text

    return fold_text(texts)


def near_key(text: str) -> str:
    """What near-duplicate search compares: the words a reader sees, each in one standard
    spelling. Lowercased; without URLs, @mentions, anonymised placeholders (<USERNAME>), a
    leading retweet mark (RT @user:), punctuation, emoji and emoticons (":v"); every word through
    `standard_word`, so "bangeeet bgt", "banget banget" and "BANGET, banget!!" are one key."""
    text = EMOTICON_RE.sub(" ", MENTION_RE.sub(" ", URL_RE.sub(" ", text.lower())))
    words = NON_WORD_RE.sub(" ", text).split()
    while words and words[0] == "rt":
        words = words[1:]
    return " ".join(standard_word(w) for w in words)


@lru_cache(maxsize=1 << 16)
def standard_word(word: str) -> str:
    """One lowercase word in its standard spelling, as far as the slang dictionary knows
    (yg -> yang, bgt -> banget, lgsg -> langsung), with letter runs written once (what people
    stretch or double differs; "saat" and "sat" becoming one is harmless in a hash key).
    Lookups try the word as written, then with stretched letters (3+) cut to one."""
    table = slang_dictionary()
    match = REDUPLICATED_RE.fullmatch(word)
    if match:
        return " ".join([standard_word(match.group(1))] * 2)
    standard = table.get(word) or table.get(STRETCH_RE.sub(r"\1", word)) or word
    standard = SAME_WORDS.get(standard, standard)
    return RUN_RE.sub(r"\1", NON_WORD_RE.sub(" ", standard.lower()).strip())


@lru_cache(maxsize=1)
def slang_dictionary() -> dict[str, str]:
    """The dictionary `data.normalize_slang` uses (indoNLP's Kamus Alay plus lokal's supplement)."""
    from lokal.data.augment import slang_table

    return slang_table()


def skeleton(key: str) -> str:
    """A near key without the vowels inside words ("baru isi kuota" -> "br is kt"): people drop
    and add vowels far more than consonants ("bgus", "brp", "sdh"), and the slang dictionary
    cannot know every abbreviation; each word keeps its first letter. Words are cut to
    SKELETON_CHARS so that one long word replaced (a glued hashtag) costs no more than a short one."""
    return " ".join(word[:SKELETON_CHARS] for word in INNER_VOWEL_RE.sub("", key).split())


def near_grams(key: str) -> set[str]:
    """What near-duplicate search compares: the character 4-grams of a near key's skeleton."""
    return shingles(skeleton(key))


def shingles(text: str, n: int = NGRAM) -> set[str]:
    """Character n-grams; a text shorter than n is its own single shingle."""
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_pairs(texts: list[str], threshold: float = 0.8, seed: int = 1) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) of near keys `texts` whose `near_grams` Jaccard is >= threshold.

    LSH proposes candidates with bands chosen so that a pair at the threshold becomes one with
    probability >= 0.999 (`lsh_bands`); every candidate is then checked with the exact Jaccard,
    so no reported pair is an estimate."""
    from datasketch import MinHash, MinHashLSH

    sets = [near_grams(t) for t in texts]
    hashes = MinHash.bulk([[s.encode() for s in grams] for grams in sets], num_perm=NUM_PERM, seed=seed,
                          hashfunc=zlib.crc32)  # C speed; datasketch's default SHA-1 took 4 s per 10k texts
    lsh = MinHashLSH(num_perm=NUM_PERM, params=lsh_bands(threshold))
    pairs = []
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            score = jaccard(sets[i], sets[j])
            if score >= threshold:
                pairs.append((j, i, score))
        lsh.insert(i, h)
    return pairs


def lsh_bands(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.999) -> tuple[int, int]:
    """Bands b and rows per band r (b * r <= num_perm) under which a pair of Jaccard `threshold`
    shares a band with probability 1 - (1 - t^r)^b >= recall, with the most rows that allow it
    (fewest candidates to verify). datasketch's own choice balances misses against extra
    candidates: at 0.6 it missed one pair in five at 0.7 (b=18, r=7), the audit's old threshold."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - max(threshold, 0.01) ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def near_duplicate_groups(texts: list[str], threshold: float = 0.8) -> list[list[int]]:
    """Groups of indices into `texts` that are near duplicates of each other (Contract 4).
    Equal near keys are searched once: the costly part runs on distinct keys only."""
    keys = [near_key(t) for t in texts]
    distinct, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    pairs = [(i, j) for i, j, _ in near_duplicate_pairs(list(distinct), threshold)]
    key_groups = groups_from_pairs(len(distinct), pairs)
    leader = np.arange(len(distinct))
    for group in key_groups:
        leader[group] = group[0]
    row_leader = leader[inverse.ravel()]
    return groups_from_pairs(len(texts), _chain(row_leader))


def _chain(labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs that link every row to the first row with the same label."""
    first: dict[int, int] = {}
    pairs = []
    for i, label in enumerate(labels.tolist()):
        if label in first:
            pairs.append((first[label], i))
        else:
            first[label] = i
    return pairs
