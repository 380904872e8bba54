"""Hugging Face decoders (Gemma, LLaMA, Qwen, GPT-2 ...) as causal language models, for
instruction fine-tuning: the pretrained LM head stays, no new head is added."""

from __future__ import annotations

import torch

from lokal.errors import LokalError
from lokal.models import LokalModel
from lokal.models.text import TextClassifier, load_pretrained


class CausalLM(LokalModel):
    """`AutoModelForCausalLM` over any hub name, local folder or `.gguf` file."""

    modality = "text"
    task, tasks = "causal_lm", ("causal_lm",)
    peft_task_type = "CAUSAL_LM"

    def __init__(
        self,
        name: str,
        max_length: int = 256,
        lora_targets: list[str] | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.name, self.max_length, self.lora_targets = name, max_length, list(lora_targets or [])
        self.tokenizer, self.net, missing = load_pretrained(AutoModelForCausalLM, name, dtype)
        if missing:  # nothing may start random: there is no new head here
            raise LokalError(f"{name}: pretrained weights missing for {missing[:8]}; "
                             "is it a complete causal-LM checkpoint?")
        if self.tokenizer.eos_token_id is None:
            raise LokalError(f"{name}: its tokenizer has no end-of-sequence token, so a tuned model could not "
                             "learn where an answer ends; use a decoder's own tokenizer")
        self.net.config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def head_names(self) -> list[str]:
        """No new head: the pretrained LM head (often tied to the embedding) is part of the base."""
        return []

    blocks = TextClassifier.blocks  # the same search for the transformer layers

    def forward(self, batch: dict[str, torch.Tensor]):
        """HF's output; with `labels` in the batch its `.loss` is the mean over unmasked tokens.
        A packed batch (data.packing=true) has `position_ids` and no attention_mask."""
        if "position_ids" in batch and getattr(getattr(self.net, "active_peft_config", None),
                                               "is_prompt_learning", False):
            raise LokalError("PEFT prompt methods drop position_ids, so packed examples would attend to each "
                             "other: set data.packing=false with method=prompt")
        # Packed: no KV cache either, as transformers separates packed examples only without one (with
        # use_cache on, the default, they silently attend to each other). Only then: prefix tuning
        # derives positions from the mask when the key is absent.
        packed = {"position_ids": batch["position_ids"], "use_cache": False} if "position_ids" in batch else {}
        return self.net(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        labels=batch.get("labels"), **packed)

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int] | None = None) -> str:
        """Greedy continuation of one encoded prompt, decoded without special tokens."""
        device = next(self.net.parameters()).device
        ids = torch.tensor([prompt_ids], device=device)  # (1, T)
        out = self.net.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=stop_ids or [self.tokenizer.eos_token_id], pad_token_id=self.tokenizer.pad_token_id,
            top_p=None, top_k=None, temperature=None,  # a checkpoint's sampling defaults would warn under greedy
        )
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
