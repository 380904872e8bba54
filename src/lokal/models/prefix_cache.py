"""Frozen-prefix feature caching for text encoders (`model.cache_frozen_prefix`).

When every parameter that trains sits in block k or above (partial fine-tuning, head only, LoRA
on the top layers), the embeddings and blocks 0..k-1 give a text the same states every epoch:
they are computed once per text and read back afterwards, for training, validation and test.

`auto` (default): on where it applies; `true`: on, or a LokalError naming why it cannot apply;
`false`: off. It applies to BERT-style encoders (embeddings + encoder layers; BERT, RoBERTa,
XLM-R, e5, MiniLM) with right padding, no parameter or hook of the method inside the prefix,
and no text augmentation. Not covered: decoders (causal LMs, decoder classifiers), image and
audio models (random augmentation changes features every epoch), prompt/prefix tuning.

What changes: the frozen prefix always runs in eval mode, so its dropout is off, while an
uncached run applies dropout there too; the blocks that train keep theirs. With dropout off the
two agree to float tolerance (tests/test_prefix_cache.py).

Why in memory, keyed by the token ids: the states are ~1.5 KB per token at width 384, a
hundred times the token cache, and they depend on the weights, whose identity on disk would
need hashing the whole model at every start; the cost they save is one epoch's prefix passes.
A text's key is its token ids (data version, tokenizer and max_length in one), and the store
is cleared whenever the split point or a prefix weight changes (PyTorch's in-place version
counter: `load_state_dict` bumps it), so it is never stale. It holds at most `MAX_BYTES`;
texts beyond that are computed each time, exactly as before.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lokal.errors import LokalError

log = logging.getLogger(__name__)
SETTINGS = ("auto", True, False)
MAX_BYTES = 4 * 2**30


@dataclass
class PrefixSplit:
    """Where an encoder splits: its embeddings, the module holding the block list, block k."""

    base: nn.Module  # the bare encoder model (BertModel, XLMRobertaModel): embeddings + encoder
    encoder: nn.Module
    attr: str  # the block list's name in `encoder` ("layer")
    layers: nn.ModuleList
    k: int

    def modules(self) -> list[nn.Module]:
        """The frozen prefix: embeddings and blocks 0..k-1."""
        return [self.base.embeddings, *self.layers[: self.k]]

    @contextmanager
    def running(self, layers: list[nn.Module]):
        """The encoder runs only `layers` for the duration."""
        self.encoder._modules[self.attr] = nn.ModuleList(layers)
        try:
            yield
        finally:
            self.encoder._modules[self.attr] = self.layers


class PrefixCache:
    """The prefix's output (T, H) per text, keyed by the text's token ids."""

    def __init__(self, split: PrefixSplit, max_bytes: int = MAX_BYTES) -> None:
        self.split, self.max_bytes = split, max_bytes
        self.params = [p for m in split.modules() for p in m.parameters()]
        self.store: dict[bytes, torch.Tensor] = {}
        self.version: tuple = ()
        self.hits = self.misses = self.bytes = 0

    def states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) states after block k-1 for a right-padded batch; zeros at padding."""
        self._check_fresh()
        lengths = mask.sum(1).tolist()
        keys = [ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        self.misses, self.hits = self.misses + len(missing), self.hits + len(keys) - len(missing)
        computed = dict(zip(missing, self._compute(ids[missing], mask[missing]), strict=True)) if missing else {}
        rows = [computed[i][:n] if i in computed else self.store[keys[i]] for i, n in enumerate(lengths)]
        for i in missing:
            self._keep(keys[i], rows[i])
        out = ids.new_zeros(len(rows), ids.shape[1], rows[0].shape[-1], dtype=rows[0].dtype)  # (B, T, H)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row.to(out.device)
        return out

    @contextmanager
    def feeding(self, states: torch.Tensor):
        """The encoder starts from `states` at block k: the embeddings' output is replaced."""
        hook = self.split.base.embeddings.register_forward_hook(lambda _m, _a, _o: states)
        try:
            with self.split.running(list(self.split.layers[self.split.k:])):
                yield
        finally:
            hook.remove()

    def _compute(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The prefix in eval mode (as it always runs here), no gradient."""
        captured = []
        last = self.split.layers[self.split.k - 1]
        hook = last.register_forward_hook(lambda _m, _a, out: captured.append(first_tensor(out)))
        try:
            with torch.no_grad(), self.split.running(list(self.split.layers[: self.split.k])):
                self.split.base(input_ids=ids, attention_mask=mask)
        finally:
            hook.remove()
        return captured[-1]

    def _keep(self, key: bytes, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if self.bytes + size > self.max_bytes:
            return  # full: this text's prefix runs each time, as without the cache
        self.store[key], self.bytes = row.clone(), self.bytes + size

    def _check_fresh(self) -> None:
        """Never stale: a prefix weight changed in place clears the store; one that trains is an error."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.params):
            raise LokalError("a parameter below block k started to train: the frozen-prefix cache would be "
                             "stale; set model.cache_frozen_prefix=false for this method")
        version = tuple(p._version for p in self.params)
        if version != self.version:
            self.store.clear()
            self.version, self.bytes = version, 0


def plan(model, setting: str | bool, augmented: bool) -> PrefixCache | None:
    """The cache for `model` with its method applied, or None; `true` where it cannot apply is an error."""
    if setting not in SETTINGS:
        raise LokalError(f"model.cache_frozen_prefix={setting!r}: choose auto, true or false")
    if setting is False:
        return None
    split, reason = find_split(model)
    reason = reason or ("data.augment rewrites training texts each epoch" if augmented else None)
    if reason is not None:
        if setting is True:
            raise LokalError(f"model.cache_frozen_prefix=true cannot apply to {model.name}: {reason}; "
                             "use auto or false")
        log.debug("frozen-prefix cache off: %s", reason)
        return None
    log.info("frozen-prefix cache on: embeddings and blocks 0-%d of %s computed once per text, in eval mode "
             "(no dropout there: model.cache_frozen_prefix=false keeps it, uncached)", split.k - 1, model.name)
    return PrefixCache(split)


def find_split(model) -> tuple[PrefixSplit | None, str | None]:
    """(split, None) where the cache applies exactly, else (None, why not)."""
    structure = encoder_parts(model)
    if isinstance(structure, str):
        return None, structure
    base, encoder, attr, layers = structure
    k = lowest_trained_block(model.net, layers)
    if k == 0:
        return None, "block 0 trains (or every block does, e.g. LoRA on all layers): nothing frozen to cache"
    split = PrefixSplit(base, encoder, attr, layers, k)
    return (split, None) if (reason := prefix_untouched(model, split)) is None else (None, reason)


def encoder_parts(model) -> tuple | str:
    """(bare encoder, encoder, block-list name, blocks) of a BERT-style model, or why not."""
    if getattr(model, "tokenizer", None) is not None and model.tokenizer.padding_side != "right":
        return "the tokenizer pads on the left"
    inner = unwrapped(model.net)
    base = getattr(inner, inner.base_model_prefix, None)
    encoder = getattr(base, "encoder", None)
    lists = [(n, m) for n, m in encoder.named_children() if isinstance(m, nn.ModuleList)] if encoder else []
    if not isinstance(getattr(base, "embeddings", None), nn.Module) or len(lists) != 1:
        return f"{type(inner).__name__} is not a BERT-style encoder (embeddings + encoder layers)"
    return base, encoder, *lists[0]


def unwrapped(net: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers sit inside it), or `net`."""
    return net.get_base_model() if hasattr(net, "get_base_model") else net


def lowest_trained_block(net: nn.Module, layers: nn.ModuleList) -> int:
    """The first block with a parameter that trains; len(layers) when none does (head only)."""
    return next((i for i, block in enumerate(layers) if any(p.requires_grad for p in block.parameters())),
                len(layers))


def prefix_untouched(model, split: PrefixSplit) -> str | None:
    """Why the cached prefix would differ from the live one, or None: a trainable parameter in
    it or outside the wrapped model (prompt tokens), or a hook on it (a side network reading it)."""
    prefix = split.modules()
    if any(p.requires_grad for m in prefix for p in m.parameters()):
        return "the embeddings train"
    inside = {id(p) for p in unwrapped(model.net).parameters()}
    if any(p.requires_grad and id(p) not in inside for p in model.net.parameters()):
        return "the method trains inputs to the model (prompt or prefix tokens)"
    if any(m._forward_hooks or m._forward_pre_hooks for block in prefix for m in block.modules()):
        return "the method reads or changes the frozen blocks' outputs (e.g. a side network)"
    return None


def first_tensor(output) -> torch.Tensor:
    """A block's hidden states, whether it returns a tensor or a tuple (transformers versions differ)."""
    return output[0] if isinstance(output, tuple) else output
