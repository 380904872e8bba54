"""A transformers sequence classifier whose head reads the mean of the real tokens' states.

Written by `lokal export` next to a model trained with `model.pooling=mean` (the default e5's),
with the import below naming the run's own class. transformers' own classifiers read the first
token; this one replaces the encoder's first-position output by the masked mean before the head
runs, exactly as lokal trained it. Load it without lokal:

    AutoModelForSequenceClassification.from_pretrained(FOLDER, trust_remote_code=True)

Needs only torch and transformers.
"""

import torch
from transformers import BertConfig as BaseConfig  # lokal export names the run's classes on these two lines
from transformers import BertForSequenceClassification as Base


class MeanPooledConfig(BaseConfig):
    """The base's config under its own model type, so that loading without trust_remote_code=True
    fails instead of silently building a head that reads the first token."""

    model_type = "lokal_mean_pooled"


class MeanPooledForSequenceClassification(Base):
    config_class = MeanPooledConfig

    def __init__(self, config):
        super().__init__(config)
        self._mask = None
        getattr(self, self.base_model_prefix).encoder.register_forward_hook(self._mean_into_first)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        if attention_mask is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        self._mask = attention_mask
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   **kwargs)
        finally:
            self._mask = None

    def _mean_into_first(self, module, args, output):
        return output if self._mask is None else mean_into_first(output, self._mask)


def mean_into_first(output, mask: torch.Tensor):
    """The encoder's output with its first position replaced by the mean of the states where
    `mask` is 1 (lokal trains with this same function)."""
    states = output[0]
    weights = mask.unsqueeze(-1).to(states.dtype)
    mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
    pooled = torch.cat([mean.unsqueeze(1), states[:, 1:]], dim=1)
    if isinstance(output, tuple):
        return (pooled, *output[1:])
    output["last_hidden_state"] = pooled
    return output
