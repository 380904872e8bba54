"""Hugging Face text models (BERT-style encoders, GPT/LLaMA/Gemma decoders) as classifiers."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.io import cached_folder
from lokal.models import LokalModel
from lokal.paths import CACHE_DIR


class TextClassifier(LokalModel):
    """`AutoModelForSequenceClassification` over any hub name, local folder or `.gguf` file."""

    modality = "text"
    task, tasks = "classification", ("classification", "multi_label")  # one logit per class, or per label
    # measured on a 2-core Xeon with AMX (benchmarks/setting.py): steps 0.72x (MiniLM) and 0.75x
    # (e5) the fp32 time, test accuracy equal / 1 tweet of 259 lower, validation accuracy equal
    bf16_on_cpu = True

    def __init__(
        self,
        name: str,
        num_classes: int,
        max_length: int = 128,
        lora_targets: list[str] | None = None,
        dtype: str = "float32",
        pooling: str = "first",
        cache_frozen_prefix: str | bool = "auto",
    ) -> None:
        """`pooling`: what the head reads. "first": the model's own head as transformers builds it
        (the first token for encoders, the last for decoders). "mean": the mean of the encoder's
        token states, for encoders trained to embed that way (e5, sentence-transformers).
        `cache_frozen_prefix`: auto, true or false (lokal.models.prefix_cache); settled by
        `plan_frozen_prefix` once the method is applied."""
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.name, self.max_length, self.lora_targets = name, max_length, list(lora_targets or [])
        # the new head is reported "MISSING": expected. A checkpoint's own head of another size
        # (a fine-tuned classifier, new labels) is replaced too: the head trains anyway.
        self.tokenizer, self.net, missing = load_pretrained(AutoModelForSequenceClassification, name, dtype,
                                                            num_labels=num_classes, ignore_mismatched_sizes=True)
        missing = [k for k in missing if not k.startswith(tuple(self.head_names))]
        if missing:  # only the new head may start random
            raise LokalError(f"{name}: pretrained weights missing for {missing[:8]}; is it a complete checkpoint?")
        # Decoders classify from the last non-pad token, so they must know the pad id.
        self.net.config.pad_token_id = self.tokenizer.pad_token_id
        if pooling not in ("first", "mean"):
            raise LokalError(f"model.pooling={pooling!r}; choose first or mean")
        self.pooling, self.mean_pool = pooling, MeanIntoFirst(self.net) if pooling == "mean" else None
        self.cache_frozen_prefix, self.prefix_cache = cache_frozen_prefix, None

    @property
    def head_names(self) -> list[str]:
        base = self.net.base_model_prefix  # methods' own modules (`lokal_*`) are not the head
        return [n for n, m in self.net.named_children()
                if n != base and not n.startswith("lokal_") and any(True for _ in m.parameters())]

    def blocks(self) -> list[str]:
        """Transformer layers: the ModuleList holding most parameters (encoder.layer, layers, h)."""
        lists = [(n, m) for n, m in self.net.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
        name, layers = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
        return [f"{name}.{i}" for i in range(len(layers))]

    def plan_frozen_prefix(self, augmented: bool) -> None:
        """Turn the frozen-prefix cache on where it applies to what the method left trainable."""
        from lokal.models.prefix_cache import plan

        self.prefix_cache = plan(self, self.cache_frozen_prefix, augmented)
        self.train(self.training)

    def train(self, mode: bool = True) -> TextClassifier:
        """With the prefix cache the frozen prefix stays in eval mode: its states must not vary."""
        super().train(mode)
        for module in self.prefix_cache.split.modules() if self.prefix_cache is not None else []:
            module.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.prefix_cache is None:
            return self._logits(batch)
        states = self.prefix_cache.states(batch["input_ids"], batch["attention_mask"])
        with self.prefix_cache.feeding(states):
            return self._logits(batch)

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.mean_pool is None:
            return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with self.mean_pool.masked(batch["attention_mask"]):
            return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


class MeanIntoFirst:
    """Mean pooling for an encoder's own head: during `TextClassifier.forward` the encoder's output
    at the first position is replaced by the mean of the real tokens' states, so every head that
    reads the first token (BERT's pooler, RoBERTa's classification head) reads the mean. A forward
    hook on the encoder, so it works under every method (PEFT changes the model in place; prompt
    tuning's virtual tokens count as tokens). Other callers of the encoder see it unchanged."""

    def __init__(self, net: nn.Module) -> None:
        from lokal.models.modeling_mean_pooling import mean_into_first  # the code `lokal export` ships

        self.mask: torch.Tensor | None = None
        self.mean_into_first = mean_into_first  # imported once here, not on every forward
        encoder = getattr(getattr(net, net.base_model_prefix, None), "encoder", None)
        if encoder is None:
            raise LokalError(f"model.pooling=mean needs an encoder (BERT, RoBERTa, XLM-R ...); "
                             f"{type(net).__name__} has none: use model.pooling=first")
        encoder.register_forward_hook(self.pool)

    @contextmanager
    def masked(self, mask: torch.Tensor):
        self.mask = mask
        try:
            yield
        finally:
            self.mask = None

    def pool(self, module, args, output):
        if self.mask is None:
            return output
        states, mask = output[0], self.mask
        if mask.shape[1] < states.shape[1]:  # virtual tokens prepended by prompt tuning
            mask = torch.cat([mask.new_ones(mask.shape[0], states.shape[1] - mask.shape[1]), mask], dim=1)
        return self.mean_into_first(output, mask)


def load_pretrained(auto_class, name: str, dtype: str, **kwargs) -> tuple:
    """(tokenizer, model, missing weight names) from a hub name, folder or `.gguf` file,
    without transformers' load chatter and with one clear error when it cannot be loaded."""
    source = gguf_to_hf(Path(name)) if name.endswith(".gguf") else name
    with quiet_transformers(), explain_load_errors(name):
        tokenizer = load_tokenizer(source)
        net, info = auto_class.from_pretrained(source, dtype=getattr(torch, dtype), output_loading_info=True, **kwargs)
    return tokenizer, net, list(info["missing_keys"]) + [key for key, *_ in info.get("mismatched_keys", [])]


@contextmanager
def quiet_transformers():
    """No load chatter: warnings about the new head and the per-tensor "Loading weights" bar."""
    from transformers.utils import logging

    level, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


@contextmanager
def explain_load_errors(name: str):
    """A hub name that cannot be fetched (offline, typo, gated) becomes one clear message."""
    try:
        yield
    except OSError as err:
        raise LokalError(
            f"model.name={name} could not be loaded ({str(err).splitlines()[0]}). Give a local folder or "
            "a .gguf file, or a hub name with the network on (HF_HUB_OFFLINE unset; `hf auth login` for "
            "gated models)"
        ) from err


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """`trust_remote_code`: a `lokal export` folder of a mean-pooled model, whose config class is
    in its code file (checked by lokal.runs.export_code before anyone passes True)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # GPT/LLaMA tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gguf_to_hf(gguf: Path) -> str:
    """Dequantise a GGUF file once into a cached HF folder; transformers' GGUF loading is slow."""
    if not gguf.is_file():
        raise LokalError(f"GGUF file not found: {gguf}")
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = CACHE_DIR / "gguf" / f"{gguf.stem}-{key}"
    return str(cached_folder(target, "config.json", lambda tmp: _convert_gguf(gguf, tmp)))


def _convert_gguf(gguf: Path, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models "quantized" and refuses save_pretrained, although
    # the weights are already dequantised floats: write config and weights ourselves.
    model.config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.get_text_config().tie_word_embeddings:
        state.pop("lm_head.weight", None)  # a view of the embedding; the loader re-ties it
    save_file(state, str(out / "model.safetensors"))
