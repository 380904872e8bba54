"""The forgetting meter: how much of the base model's general behaviour a fine-tune kept,
measured on a general reference set (not the task's data), base against tuned.

- Linear CKA (Kornblith et al. 2019) between the two models' pooled features on the reference
  inputs, for the final representation and per block: 1.0 = unchanged up to rotation and scale,
  lower = the fine-tune rewrote it. Needs no labels, so it works for every model.
- Causal LMs also get the perplexity of both on the reference text: a ratio above 1 = worse
  at general text than before.

The base is the model as training found it: a PEFT model's own adapters, disabled (no copy
needed), or a copy kept before training (`base_copy`). References that ship: general Indonesian
sentences (assets/general_id.txt) for text models, random crops of scikit-learn's two sample
photos for image models; or a user's .txt file, table with a `text` column, or image folder.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.io import read_lines
from lokal.paths import GENERAL_TEXTS

PREFIX = "forgetting/"
MIN_EXAMPLES = 10  # CKA centres over examples: a handful says little; 100+ is better
REFERENCE_HELP = ("give a .txt file (one text a line), a CSV/TSV/JSONL/Parquet table with a `text` column, "
                  "a folder of images, or null for the shipped default")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two views (n, d1) and (n, d2) of the same n
    examples: <K, L> / (||K|| ||L||) for the centred Gram matrices K = XX^T, L = YY^T, which
    equals ||Y^T X||^2 / (||X^T X|| ||Y^T Y||) for centred columns. 1.0 = the same up to an
    orthogonal transform and isotropic scaling; nan when one view is constant."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples in both views, got {x.shape[0]} and {y.shape[0]} rows")
    x, y = centre(x), centre(y)
    gram_x, gram_y = x @ x.T, y @ y.T  # (n, n): cheaper than (d, d) for the wide features of CNNs
    cross, self_x, self_y = (gram_x * gram_y).sum(), (gram_x * gram_x).sum(), (gram_y * gram_y).sum()
    if self_x == 0 or self_y == 0:
        return float("nan")
    # sqrt(a * a) == a exactly in IEEE arithmetic, so identical features give exactly 1.0
    return min(1.0, float(cross / torch.sqrt(self_x * self_y)))


def centre(features: torch.Tensor) -> torch.Tensor:
    features = features.detach().to("cpu", torch.float64).flatten(1)
    return features - features.mean(0, keepdim=True)


def prepare_reference(model: nn.Module, reference=None) -> None:
    """Before training: the default reference for audio models is synthesised by espeak-ng, so
    a machine without it learns so now, not after training."""
    if model.modality == "audio" and reference is None:
        from lokal.assets.general_speech import general_speech

        general_speech()


def base_copy(model: nn.Module) -> nn.Module | None:
    """What `forgetting_report` needs to know the base later, taken before training: None for a
    PEFT model (its adapters disabled are the base), else a frozen copy on the CPU. BatchNorm
    statistics move in training even under PEFT, so CNNs with them always get a copy."""
    import copy

    if is_peft(model.net) and not has_running_stats(model.net):
        return None
    return copy.deepcopy(model).requires_grad_(False).eval().to("cpu")


def is_peft(net: nn.Module) -> bool:
    return hasattr(net, "peft_config")


def has_running_stats(net: nn.Module) -> bool:
    return any(name.endswith("running_mean") for name, _ in net.named_buffers())


def forgetting_report(base_model: nn.Module | None, tuned_model: nn.Module, reference=None,
                      batch_size: int = 16, limit: int = 256) -> dict[str, float]:
    """Linear CKA of the tuned model's features against the base's on `reference` (and, for
    causal LMs, both perplexities), as flat `forgetting/...` metrics.

    Args:
        base_model: the model before training (`base_copy`), or None / `tuned_model` itself for
            a PEFT model: its adapters are then disabled to compute the base.
        tuned_model: a lokal model wrapper (TextClassifier, CausalLM, ImageClassifier).
        reference: None (the shipped default for the modality), a path (see `reference_inputs`),
            or a list of texts / PIL images.
        batch_size: examples per forward pass (a quarter of it for causal LMs: their logits are big).
        limit: at most this many reference examples (a fixed random sample of larger sets).
    """
    inputs = reference_inputs(reference, tuned_model.modality, limit)
    device = next(tuned_model.net.parameters()).device
    tuned = measure(tuned_model, inputs, batch_size, device)
    with as_base(base_model, tuned_model) as base_model:
        base = measure(base_model, inputs, batch_size, device)
    return compare(base, tuned) | {f"{PREFIX}examples": len(inputs)}


@contextmanager
def as_base(base_model: nn.Module | None, tuned_model: nn.Module) -> Iterator[nn.Module]:
    """The model that computes the base: the one given, or the tuned PEFT model, adapters off."""
    if base_model is not None and base_model is not tuned_model:
        yield base_model
        return
    net = tuned_model.net
    if not is_peft(net) or has_running_stats(net):
        why = "BatchNorm statistics moved in training" if is_peft(net) else "it is not a PEFT model"
        raise LokalError(f"the forgetting meter needs the base of {tuned_model.name}, which the tuned model cannot "
                         f"give back ({why}): keep `lokal.evaluation.forgetting.base_copy(model)` from before training")
    with net.disable_adapter():
        yield tuned_model


@dataclass
class Features:
    """One model's view of the reference: pooled features (n, d) and, for LMs, token losses."""

    final: torch.Tensor
    blocks: list[torch.Tensor] = field(default_factory=list)
    nll: float = 0.0  # summed over `tokens` next-token predictions
    tokens: int = 0


def compare(base: Features, tuned: Features) -> dict[str, float]:
    report = {f"{PREFIX}cka": linear_cka(base.final, tuned.final)}
    for i, (b, t) in enumerate(zip(base.blocks, tuned.blocks, strict=True)):
        report[f"{PREFIX}cka/block_{i}"] = linear_cka(b, t)
    if base.tokens and tuned.tokens:
        ppl_base, ppl_tuned = math.exp(base.nll / base.tokens), math.exp(tuned.nll / tuned.tokens)
        report |= {f"{PREFIX}ppl_base": ppl_base, f"{PREFIX}ppl_tuned": ppl_tuned,
                   f"{PREFIX}ppl_ratio": ppl_tuned / ppl_base}
    return report


def summary_line(report: dict[str, float]) -> str:
    """One line for the run summary, e.g. `forgetting: CKA 0.981 (lowest block 0.962), ...`."""
    blocks = [v for k, v in report.items() if k.startswith(f"{PREFIX}cka/")]
    line = f"forgetting: CKA {report[f'{PREFIX}cka']:.4f} on {report[f'{PREFIX}examples']} reference examples"
    if blocks:
        line += f" (lowest block {min(blocks):.4f})"
    if f"{PREFIX}ppl_ratio" in report:
        line += (f"; reference perplexity {report[f'{PREFIX}ppl_base']:.2f} -> {report[f'{PREFIX}ppl_tuned']:.2f} "
                 f"(x{report[f'{PREFIX}ppl_ratio']:.3f})")
    return line + " (1.0 = unchanged)"


# -- features -----------------------------------------------------------------------------------

@torch.no_grad()
def measure(model: nn.Module, inputs: list, batch_size: int, device: torch.device) -> Features:
    """Pooled features of `model` on the reference, in eval mode on `device`; mode and device
    are put back afterwards (the base copy lives on the CPU between uses)."""
    net = model.net
    was_training, home = net.training, next(net.parameters()).device
    net.eval().to(device)
    try:
        if model.modality == "text":
            return text_features(model, inputs, batch_size, device)
        if model.modality == "audio":
            return audio_features(model, inputs, batch_size, device)
        return image_features(model, inputs, batch_size, device)
    finally:
        net.train(was_training).to(home)


def text_features(model: nn.Module, texts: list[str], batch_size: int, device: torch.device) -> Features:
    """Mean over non-pad tokens of the last hidden state (final) and of every layer's output
    (blocks); for causal LMs also the next-token loss over the same tokens."""
    causal = model.task == "causal_lm"
    if causal:  # logits are (B, T, vocab): Gemma's 262k vocabulary at 16 x 64 tokens is 1 GB in float32
        batch_size = max(1, batch_size // 4)
    parts: list[list[torch.Tensor]] = []
    nll, tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = model.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=model.max_length, return_tensors="pt").to(device)
        out = model.net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        length = enc["input_ids"].shape[1]  # PEFT prompt tuning prepends virtual tokens: keep the real ones
        parts.append([masked_mean(h[:, -length:], enc["attention_mask"]) for h in out.hidden_states])
        if causal:
            batch_nll, batch_tokens = next_token_loss(out.logits[:, -length:], enc["input_ids"], enc["attention_mask"])
            nll, tokens = nll + batch_nll, tokens + batch_tokens
    layers = [torch.cat(layer) for layer in zip(*parts, strict=True)]  # embeddings, block 0, ..., last (normed)
    return Features(final=layers[-1], blocks=layers[1:], nll=nll, tokens=tokens)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, C): the mean over the tokens the mask keeps."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed cross-entropy of each real token given those before it, and how many there were."""
    keep = (mask[:, 1:] * mask[:, :-1]).bool()  # both the predicted token and its context are real
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    return float(losses[keep].sum()), int(keep.sum())


def image_features(model: nn.Module, images: list, batch_size: int, device: torch.device) -> Features:
    """The classifier's input (timm's pooled pre-logits) as the final features and each block's
    output, globally average-pooled; read with hooks so the model runs its own forward (input
    prompts, PEFT wrappers and all)."""
    import timm

    transform = timm.data.create_transform(**model.data_config, is_training=False)
    names = image_blocks(model)
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in ["final", *names]}

    def keep(name: str, pre: bool):
        def hook(_module, args, output=None) -> None:  # returns None: nothing changes
            captured[name].append(pool(args[0] if pre else output))
        return hook

    net = model.net
    hooks = [net.get_classifier().register_forward_pre_hook(keep("final", pre=True))]
    hooks += [net.get_submodule(name).register_forward_hook(keep(name, pre=False)) for name in names]
    dtype = next(net.parameters()).dtype
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(image) for image in images[start:start + batch_size]])
            net(batch.to(device, dtype))  # (B, 3, H, W)
    finally:
        for hook in hooks:
            hook.remove()
    return Features(final=torch.cat(captured["final"]), blocks=[torch.cat(captured[name]) for name in names])


def audio_features(model: nn.Module, waves: list, batch_size: int, device: torch.device) -> Features:
    """Whisper's encoder on the reference recordings: its output and each layer's, averaged over
    the positions that hold audio (the rest of the window is padding). The encoder runs as the
    model would run it (LoRA layers, an input prompt's hook), read with hooks."""
    encoder = model.encoder()
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _a, out: captured.append(pool_later(out)))
             for layer in encoder.layers]
    final, blocks = [], [[] for _ in encoder.layers]
    dtype = next(encoder.parameters()).dtype
    try:
        for start in range(0, len(waves), batch_size):
            features = model.feature_extractor(waves[start:start + batch_size], sampling_rate=16000,
                                               return_tensors="pt", return_attention_mask=True)
            out = encoder(features.input_features.to(device, dtype)).last_hidden_state  # (B, T, C)
            mask = frame_mask(features.attention_mask, out.shape[1]).to(device)
            final.append(masked_mean(out.float(), mask).cpu())
            for i, hidden in enumerate(captured):
                blocks[i].append(masked_mean(hidden, mask).cpu())
            captured.clear()
    finally:
        for hook in hooks:
            hook.remove()
    return Features(final=torch.cat(final), blocks=[torch.cat(b) for b in blocks])


def pool_later(output) -> torch.Tensor:
    return (output[0] if isinstance(output, tuple | list) else output).detach().float()


def frame_mask(mel_mask: torch.Tensor, positions: int) -> torch.Tensor:
    """(B, positions) 1 where the encoder position holds audio: the encoder halves the mel frames."""
    lengths = ((mel_mask.sum(1) + 1) // 2).clamp(1, positions)
    return (torch.arange(positions).unsqueeze(0) < lengths.unsqueeze(1)).long()


def image_blocks(model: nn.Module) -> list[str]:
    try:
        return model.blocks()
    except LokalError:  # timm reports no stages: the final features still tell
        return []


def pool(output) -> torch.Tensor:
    """A block's output as one vector per example: (B, C, H, W) and (B, N, C) are averaged over
    positions; flattening instead would make CKA's inputs millions wide for early CNN blocks."""
    tensor = output[0] if isinstance(output, tuple | list) else output
    tensor = tensor.detach().float()
    if tensor.dim() == 4:
        return tensor.mean((2, 3))
    if tensor.dim() == 3:
        return tensor.mean(1)
    return tensor.flatten(1)


# -- reference sets -------------------------------------------------------------------------------

def reference_inputs(reference, modality: str, limit: int = 256) -> list:
    """The reference examples: texts (str) for text models, RGB PIL images for image models.

    `reference` is None (general_id.txt for text; `limit` crops of scikit-learn's sample photos
    for images), a list of examples, or a path: a .txt file (one text a line), a table with a
    `text` column, or a folder of images (searched recursively). Sets over `limit` are sampled."""
    if reference is None:
        inputs = {"text": lambda: read_lines(GENERAL_TEXTS), "image": lambda: sample_crops(limit),
                  "audio": lambda: read_recordings(general_speech_folder(), limit)}[modality]()
    elif isinstance(reference, Sequence) and not isinstance(reference, str):
        inputs = list(reference)
    else:
        inputs = read_reference(Path(reference), modality, limit)
    if len(inputs) < MIN_EXAMPLES:
        raise LokalError(f"forgetting reference {reference or 'default'} has {len(inputs)} examples; CKA needs at "
                         f"least {MIN_EXAMPLES} (100+ for a stable number): {REFERENCE_HELP}")
    return sample(inputs, limit)


def sample(items: list, limit: int) -> list:
    """At most `limit` items: a fixed random sample (seed 0) in file order, so runs compare."""
    if len(items) <= limit:
        return items
    return [items[i] for i in sorted(random.Random(0).sample(range(len(items)), limit))]


def read_reference(path: Path, modality: str, limit: int) -> list:
    from lokal.data.checks import IMAGE_EXTENSIONS, load_rgb

    where = f"evaluation.forgetting_reference={path}"
    if not path.exists():
        raise LokalError(f"{where} does not exist: {REFERENCE_HELP}")
    if modality == "audio":
        if not path.is_dir():
            raise LokalError(f"{where}: the model reads audio, so give a folder of recordings (or null for the "
                             "default, general sentences read by espeak-ng)")
        return read_recordings(path, limit)
    if modality == "image":
        if not path.is_dir():
            raise LokalError(f"{where}: the model reads images, so give a folder of images (or null for the default)")
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        return [load_rgb(f) for f in sample(files, limit)]  # sampled before decoding: folders can be large
    if path.is_dir():
        raise LokalError(f"{where} is a folder, but the model reads text: give a .txt file (one text a line) "
                         "or a table with a `text` column")
    return read_lines(path) if path.suffix.lower() == ".txt" else read_text_column(path)


def general_speech_folder() -> Path:
    from lokal.assets.general_speech import general_speech

    return general_speech()


def read_recordings(folder: Path, limit: int) -> list:
    """Recordings in a folder (searched recursively) as 16 kHz mono waveforms, sampled first."""
    from lokal.data.audio import load_audio
    from lokal.data.checks import AUDIO_EXTENSIONS

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
    return [load_audio(f) for f in sample(files, limit)]


def read_text_column(path: Path) -> list[str]:
    from lokal.data.tables import read_table

    frame = read_table(str(path))
    if "text" not in frame.columns:
        raise LokalError(f"evaluation.forgetting_reference={path}: no `text` column; columns are "
                         f"{list(frame.columns)}. Rename the column of general texts to `text`")
    texts = frame["text"].dropna().astype(str).str.strip()
    return texts[texts != ""].tolist()


def sample_crops(count: int, seed: int = 0) -> list:
    """`count` square crops (a quarter to all of the short side, half mirrored) of scikit-learn's
    two sample photos (a temple in China, a flower): natural images from outside any task,
    shipped with scikit-learn, so the reference needs no download."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 arrays
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(height, width) // 4, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = photo[top:top + side, left:left + side]
        crops.append(Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)))
    return crops
