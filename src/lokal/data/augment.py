"""Training-data transforms beyond timm's image pipeline: EDA for texts, mixup/CutMix for image
batches, and Indonesian slang normalisation (a normalisation, applied to every split).

Images get RandAugment, crops and flips from `timm.data.create_transform` (the `data.augment`
keys); what lives here is what timm's per-image transform cannot do (mixing two images) and
what text has no library for.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from lokal.errors import LokalError
from lokal.paths import ASSETS_DIR

SLANG_SUPPLEMENT = ASSETS_DIR / "slang_id.tsv"
WORD = re.compile(r"\b\w+\b")


def from_config(cls, config: dict | None, key: str):
    """`cls(**config)` or None; a misspelled key names the ones that exist."""
    if config is None:
        return None
    try:
        return cls(**config)
    except TypeError as err:
        keys = ", ".join(asdict(cls()))
        raise LokalError(f"data.{key}={dict(config)}: {err}; the keys are {keys}") from err


# -- text: EDA ---------------------------------------------------------------------------
@dataclass
class TextAugment:
    """Random deletion and random swap from EDA (Wei & Zou 2019).

    EDA's two operations that need no thesaurus (its synonym replacement and insertion need
    WordNet, which Indonesian lacks). Applied to training texts only, freshly for every batch,
    so each epoch sees other variants; deletion runs before the swaps.
    """

    delete: float = 0.0  # each word dropped with this probability (EDA: p_rd = 0.1)
    swap: float = 0.0  # swap two random words round(swap * n_words) times, at least once if > 0 (EDA: alpha_rs)

    def __post_init__(self) -> None:
        for name in ("delete", "swap"):
            if not 0 <= getattr(self, name) <= 1:
                raise LokalError(f"data.augment.{name}={getattr(self, name)} must be in [0, 1]")

    def __call__(self, text: str, rng: random.Random) -> str:
        words = random_deletion(text.split(), self.delete, rng)
        return " ".join(random_swap(words, self.swap, rng))


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability p; never return nothing (EDA keeps one random word)."""
    if p == 0 or len(words) <= 1:
        return words
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def random_swap(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Swap two random positions max(1, int(p * n)) times (EDA's n_rs), when p > 0."""
    if p == 0 or len(words) < 2:
        return words
    words = list(words)
    for _ in range(max(1, int(p * len(words)))):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return words


class TextCollate:
    """Pads a batch of token rows. With `augment` (training), re-tokenises each row's "text"
    after EDA, so every epoch trains on fresh variants. A plain object, not a bound method of
    the data module: loader workers pickle the tokenizer, not the whole table."""

    def __init__(self, tokenizer, max_length: int, augment: TextAugment | None = None) -> None:
        self.tokenizer, self.max_length, self.augment = tokenizer, max_length, augment

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.augment is not None:
            from lokal.data.cache import tokenize

            rng = batch_rng()
            features = tokenize(self.tokenizer, [self.augment(r["text"], rng) for r in rows], self.max_length)
        else:
            features = [{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows]
        batch = self.tokenizer.pad(features, return_tensors="pt")
        index = {"index": torch.tensor([r["index"] for r in rows])} if "index" in rows[0] else {}
        return {**batch, "label": torch.tensor([r["label"] for r in rows])} | index


def batch_rng() -> random.Random:
    """A generator for one batch, drawn from torch's global RNG: Lightning's seed_everything
    fixes it in the main process and torch re-seeds it in every loader worker each epoch, so
    augmentations are reproducible by seed yet differ between epochs, batches and workers."""
    return random.Random(int(torch.randint(2**62, (1,)).item()))


# -- text: slang normalisation -----------------------------------------------------------------
def normalize_slang(text: str) -> str:
    """Indonesian slang and abbreviations to their standard words ("yg" -> "yang",
    "mantul" -> "mantap betul"), from indoNLP's dictionary (MIT; Kamus Alay, Salsabila et al.
    2018) plus lokal's supplement (assets/slang_id.tsv) for common words it lacks.

    A whole-word dictionary lookup: the same output as indoNLP's `replace_slang` on the
    shipped corpus, 85x faster, and without its KeyError on keys it stores regex-escaped."""
    table = slang_table()
    return WORD.sub(lambda m: table.get(m.group(0).lower(), m.group(0)), text)


@lru_cache(maxsize=1)
def slang_table() -> dict[str, str]:
    """indoNLP's single-word entries, then lokal's supplement on top. A few indoNLP entries
    map to a word that is itself in the supplement ("klo" -> "kalo"): those are followed once."""
    from indoNLP.preprocessing import SLANG_DATA

    supplement = read_supplement(SLANG_SUPPLEMENT)
    table = {k: v for k, v in SLANG_DATA.items() if WORD.fullmatch(k)} | supplement
    return {k: supplement.get(v, v) for k, v in table.items()}


def read_supplement(path: Path) -> dict[str, str]:
    """`slang<TAB>standard` lines; `#` starts a comment line."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            slang, standard = line.split("\t")
            pairs[slang.strip().lower()] = standard.strip()
    return pairs


def slang_version() -> str:
    """A short hash of the dictionary, for cache keys that depend on the normalised text."""
    return hashlib.sha256(repr(sorted(slang_table().items())).encode()).hexdigest()[:12]


# -- images: mixup / CutMix ----------------------------------------------------------------------
@dataclass
class MixupConfig:
    """mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on training batches, via timm.

    Defaults are the DeiT recipe timm trains with. label_smoothing here smooths the mixed
    targets; leave loss.label_smoothing at 0 with mixup, or the labels are smoothed twice.
    """

    mixup_alpha: float = 0.8  # Beta(alpha, alpha) mixing weight; 0 turns mixup off
    cutmix_alpha: float = 1.0  # 0 turns CutMix off
    prob: float = 1.0  # share of batches mixed
    switch_prob: float = 0.5  # with both on: share of mixed batches that use CutMix
    label_smoothing: float = 0.1


class BatchMixup:
    """Mixes a batch {"image": (B, 3, H, W), "label": (B,)} into soft labels (B, C).

    timm mixes each image with its mirror in the batch and asserts an even batch size; an
    odd last batch mixes all but its last image, which keeps its (smoothed) one-hot label.
    """

    def __init__(self, config: MixupConfig, num_classes: int) -> None:
        from timm.data import Mixup

        if config.mixup_alpha <= 0 and config.cutmix_alpha <= 0:
            raise LokalError("data.mixup: set mixup_alpha or cutmix_alpha above 0, or data.mixup=null")
        self.num_classes, self.smoothing = num_classes, config.label_smoothing
        self.mixup = Mixup(mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, prob=config.prob,
                           switch_prob=config.switch_prob, label_smoothing=config.label_smoothing,
                           num_classes=num_classes)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from timm.data.mixup import mixup_target

        images, labels = batch["image"], batch["label"]
        even = len(labels) - len(labels) % 2
        parts = [mixup_target(labels[even:], self.num_classes, smoothing=self.smoothing)]  # (B % 2, C)
        if even:
            _, mixed = self.mixup(images[:even], labels[:even])  # timm mixes images[:even] in place
            parts.insert(0, mixed)
        return {**batch, "image": images, "label": torch.cat(parts)}
