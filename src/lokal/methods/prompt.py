"""Prompt tuning (Lester et al. 2021), prefix tuning (Li & Liang 2021) and P-tuning (Liu et al. 2021)
for text through PEFT; visual prompt tuning (Jia et al. 2022) for ViTs and a learned padding prompt
(Bahng et al. 2022) for other image models; for audio (Whisper), a learned pattern added to the
input log-mel: model reprogramming (Yang et al. 2021, Voice2Series), the audio counterpart of the
padding prompt.

The backbone stays frozen: only the learned inputs (and the new task head) train and get saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes, require_modality

TEXT_KINDS = ("prompt_tuning", "prefix", "p_tuning")
KINDS = ("auto", *TEXT_KINDS, "visual", "reprogram")
MODULE = "lokal_prompt"  # image prompts live in model.net.lokal_prompt, so saving and freezing find them


@dataclass
class Prompt(Method):
    """Learned inputs for a frozen backbone. `kind="auto"` is prefix for text, visual for images,
    reprogram for audio."""

    lr: float = 1e-2  # prompts take larger steps than weights (P-tuning v2: 5e-3..1e-2; Lester et al.: 0.3)
    kind: str = "auto"
    num_tokens: int = 10  # virtual tokens (text) or prompt tokens per layer (ViT)
    deep: bool = False  # ViT: VPT-deep, fresh prompt tokens before every block
    padding: int = 16  # CNN: border width in pixels of the padding prompt, at the model's input size
    encoder_hidden_size: int = 128  # P-tuning: width of the MLP that produces the prompt

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LokalError(f"method.kind={self.kind!r} is unknown; valid kinds: {', '.join(KINDS)}")

    def apply(self, model: nn.Module) -> nn.Module:
        kind = self._kind_for(model)
        if kind in TEXT_KINDS:
            return self._apply_text(model, kind)
        if kind == "reprogram":
            add_input_pattern(model)
            return freeze_all_but(model, [MODULE, *head_prefixes(model)], "prompt")
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(model.net, VisionTransformer):
            add_visual_prompts(model.net, self.num_tokens, self.deep)
        else:
            add_padding_prompt(model.net, self.padding, input_size(model))
        return freeze_all_but(model, [MODULE, *head_prefixes(model)], "prompt")

    def _kind_for(self, model: nn.Module) -> str:
        if self.kind == "auto":
            # Shallow prompts (prompt_tuning, p_tuning) match fine-tuning only at billions of parameters
            # (Lester et al. 2021; P-tuning v2, Liu et al. 2022); on BERT-size encoders and small decoders
            # prompts at every layer (prefix) learn far more. In an encoder classifier PEFT also puts the
            # soft prompt before [CLS], so the pooler reads a virtual token.
            return {"image": "visual", "audio": "reprogram"}.get(model.modality, "prefix")
        if self.kind == "visual":
            require_modality(model, ("image",), "prompt", f"for text use method.kind= one of {', '.join(TEXT_KINDS)}")
        elif self.kind == "reprogram":
            require_modality(model, ("audio",), "prompt (kind=reprogram)", "use method.kind=auto")
        else:
            require_modality(model, ("text",), f"prompt (kind={self.kind})",
                             "for images use method.kind=visual, for audio method.kind=reprogram")
        return self.kind

    def _apply_text(self, model: nn.Module, kind: str) -> nn.Module:
        from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

        common = dict(task_type=model.peft_task_type or "SEQ_CLS", num_virtual_tokens=self.num_tokens,
                      modules_to_save=list(model.head_names) or None)  # the new head trains and is saved
        config = {
            "prompt_tuning": lambda: PromptTuningConfig(**common),  # random init: no tokenizer text needed
            "prefix": lambda: PrefixTuningConfig(**common),
            "p_tuning": lambda: PromptEncoderConfig(**common, encoder_hidden_size=self.encoder_hidden_size),
        }[kind]()
        model.net = get_peft_model(model.net, config)
        return ready_for_prompts(model)


def ready_for_prompts(model: nn.Module) -> nn.Module:
    """What a PEFT text prompt needs beyond its weights, when trained and again when its adapter
    is loaded onto a fresh base: the patch below, and left padding on decoders. The soft prompt
    comes first, so a decoder classifier (which reads the last position once PEFT passes
    inputs_embeds) and generation both need the text to end at the last position."""
    patch_peft_for_transformers_cache()
    if is_causal(model.net) and model.tokenizer is not None:
        model.tokenizer.padding_side = "left"
    return model


def is_causal(net: nn.Module) -> bool:
    return any(getattr(m, "is_causal", False) is True for m in net.modules())


def input_size(model: nn.Module) -> tuple[int, int, int]:
    config = model.data_config or model.net.pretrained_cfg
    return tuple(config["input_size"])


# -- visual prompt tuning (ViT) -------------------------------------------------------------------

class VisualPrompts(nn.Module):
    """VPT prompt tokens: one set (shallow) or one per block (deep), VPT's xavier-uniform init."""

    def __init__(self, num_tokens: int, dim: int, layers: int, patch_area: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_area + dim))
        self.tokens = nn.Parameter(torch.empty(layers, num_tokens, dim).uniform_(-bound, bound))


def add_visual_prompts(net: nn.Module, num_tokens: int, deep: bool) -> None:
    """Insert prompt tokens after the class/register tokens before the first block (replace them
    before every later block when `deep`), and drop them after the blocks so pooling is unchanged."""
    height, width = net.patch_embed.patch_size
    prompts = net.lokal_prompt = VisualPrompts(num_tokens, net.embed_dim, len(net.blocks) if deep else 1,
                                               height * width)
    # Hooks hold the prompt module through partial (not a closure over net): a deep copy of the
    # model then gets hooks that point at its own copy of the prompts.
    start = net.num_prefix_tokens
    net.norm_pre.register_forward_hook(partial(_insert_after, prompts, start))
    for i, block in enumerate(net.blocks if deep else []):
        if i:
            block.register_forward_pre_hook(partial(_replace_before, prompts, i, start))
    net.norm.register_forward_hook(partial(_drop_after, prompts, start))


def _insert(x: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    tokens = tokens.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, P, C)
    return torch.cat([x[:, :start], tokens, x[:, start:]], dim=1)


def _drop(x: torch.Tensor, prompts: VisualPrompts, start: int) -> torch.Tensor:
    return torch.cat([x[:, :start], x[:, start + prompts.tokens.shape[1]:]], dim=1)


def _insert_after(prompts: VisualPrompts, start: int, module: nn.Module, args: tuple, x: torch.Tensor):
    return _insert(x, prompts.tokens[0], start)


def _replace_before(prompts: VisualPrompts, layer: int, start: int, block: nn.Module, args: tuple) -> tuple:
    x, *rest = args
    return (_insert(_drop(x, prompts, start), prompts.tokens[layer], start), *rest)


def _drop_after(prompts: VisualPrompts, start: int, module: nn.Module, args: tuple, x: torch.Tensor):
    return _drop(x, prompts, start)


# -- padding prompt (any other image model) -------------------------------------------------------

class PaddingPrompt(nn.Module):
    """A learned additive border of width `pad` (Bahng et al.'s padding prompter), learned at the
    model's input size and resized with the image for other sizes."""

    def __init__(self, channels: int, height: int, width: int, pad: int) -> None:
        super().__init__()
        self.top, self.bottom = (nn.Parameter(torch.randn(1, channels, pad, width)) for _ in range(2))
        self.left, self.right = (nn.Parameter(torch.randn(1, channels, height - 2 * pad, pad)) for _ in range(2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same
        centre = self.left.new_zeros(*self.left.shape[:3], self.top.shape[3] - 2 * self.left.shape[3])
        prompt = torch.cat([self.top, torch.cat([self.left, centre, self.right], 3), self.bottom], 2)
        if prompt.shape[-2:] != images.shape[-2:]:
            prompt = nn.functional.interpolate(prompt, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return images + prompt.to(images.dtype)


def add_padding_prompt(net: nn.Module, pad: int, size: tuple[int, int, int]) -> None:
    channels, height, width = size
    if not 0 < 2 * pad < min(height, width):
        raise LokalError(f"method.padding={pad} must be between 1 and {(min(height, width) - 1) // 2} "
                         f"for the {height}x{width} input of this model")
    net.lokal_prompt = PaddingPrompt(channels, height, width, pad)
    net.register_forward_pre_hook(_add_padding_prompt)


def _add_padding_prompt(net: nn.Module, args: tuple) -> tuple:
    return (net.lokal_prompt(args[0]), *args[1:])


# -- input reprogramming (audio) ------------------------------------------------------------------

class InputPattern(nn.Module):
    """A learned (mels, frames) pattern added to every log-mel input, starting at zero: training
    starts from the base model exactly."""

    def __init__(self, mels: int, frames: int) -> None:
        super().__init__()
        self.pattern = nn.Parameter(torch.zeros(mels, frames))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, mels, frames) -> same
        return features + self.pattern.to(features.dtype)


def add_input_pattern(model: nn.Module) -> None:
    """Hook the encoder, not the model: generation calls the encoder directly, once per clip."""
    extractor = model.feature_extractor
    model.net.lokal_prompt = InputPattern(extractor.feature_size, extractor.nb_max_frames)
    encoder = model.net.get_encoder()
    encoder.register_forward_pre_hook(partial(_add_input_pattern, model.net.lokal_prompt), with_kwargs=True)


def _add_input_pattern(pattern: InputPattern, module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    if args:
        return (pattern(args[0]), *args[1:]), kwargs
    return args, kwargs | {"input_features": pattern(kwargs["input_features"])}


# -- PEFT 0.21 with transformers 5 ----------------------------------------------------------------

def patch_peft_for_transformers_cache() -> None:
    """transformers 5 renamed the KV-cache argument `past_key_values` to `cache`; PEFT 0.21 still
    reads the old name. Unpatched, generation re-inserts the soft prompt at every step (prompt
    tuning, P-tuning) or drops the prefix, and prefix tuning of a classifier fails PEFT's check that
    the model takes `past_key_values`. Idempotent; does nothing on versions without the rename."""
    import inspect

    from peft import PeftModelForCausalLM, PeftModelForSequenceClassification
    from transformers.generation.utils import GenerationMixin

    if "cache" not in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters:
        return
    if not getattr(PeftModelForCausalLM, "_lokal_cache_patch", False):
        PeftModelForCausalLM.prepare_inputs_for_generation = _prepare_with_cache(
            PeftModelForCausalLM.prepare_inputs_for_generation)
        PeftModelForSequenceClassification._prefix_tuning_forward = _prefix_forward_with_cache
        PeftModelForCausalLM._lokal_cache_patch = True


def _renamed(inputs: dict, old: str, new: str) -> dict:
    if old in inputs:
        inputs[new] = inputs.pop(old)
    return inputs


def _prepare_with_cache(prepare):
    from functools import wraps

    @wraps(prepare)  # generate() validates its kwargs against this signature
    def prepare_inputs_for_generation(self, *args, **kwargs):
        if not self.active_peft_config.is_prompt_learning:
            return prepare(self, *args, **kwargs)
        base = self.base_model_prepare_inputs_for_generation
        self.base_model_prepare_inputs_for_generation = lambda *a, **k: _renamed(base(*a, **k), "cache",
                                                                                  "past_key_values")
        try:
            return _renamed(prepare(self, *args, **kwargs), "past_key_values", "cache")
        finally:
            self.base_model_prepare_inputs_for_generation = base

    return prepare_inputs_for_generation


def _prefix_forward_with_cache(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                               **kwargs):
    """PEFT's prefix-tuning forward for classifiers, passing the prefix as `cache=`. Positions count
    real tokens only (as generate() does): a left-padded text then sits where it would alone, right
    after the prefix, instead of further away under RoPE."""
    text = input_ids if input_ids is not None else inputs_embeds
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if attention_mask is not None and "position_ids" not in kwargs:  # the mask already covers the prefix
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -text.shape[1]:]
    return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           labels=labels, cache=self.get_prompt(text.shape[0]), **kwargs)
