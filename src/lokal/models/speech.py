"""Whisper (Radford et al. 2022) through transformers: speech recognition with its own decoder
(`WhisperASR`), and audio classification with its encoder and a new head (`WhisperAudioClassifier`).

Both read 16 kHz log-mel features made by the checkpoint's own feature extractor, which the data
modules take from `model.feature_extractor`.
"""

from __future__ import annotations

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.models import LokalModel
from lokal.models.text import explain_load_errors, quiet_transformers

TASKS = ("transcribe", "translate")


class WhisperASR(LokalModel):
    """`WhisperForConditionalGeneration` over a hub name (openai/whisper-small) or a local folder.

    `language` (e.g. "id", "indonesian") and `whisper_task` pick the decoder's prefix tokens,
    in training labels and in generation alike; English-only checkpoints (*.en) take neither.
    """

    modality = "audio"
    task, tasks = "speech_recognition", ("speech_recognition",)
    peft_task_type = None  # PEFT's generic model: Whisper's forward takes input_features, not input_ids
    # (IA)^3's own choice for encoder-decoders (Liu et al. 2022; PEFT's T5 default): keys, values and
    # the feed-forward input; PEFT has no Whisper default
    ia3_targets, ia3_feedforward = ["k_proj", "v_proj", "fc2"], ["fc2"]

    def __init__(
        self,
        name: str,
        language: str | None = None,
        whisper_task: str = "transcribe",
        max_new_tokens: int = 128,
        lora_targets: list[str] | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.name, self.max_new_tokens, self.lora_targets = name, max_new_tokens, list(lora_targets or [])
        with quiet_transformers(), explain_load_errors(name):
            self.processor = WhisperProcessor.from_pretrained(name)
            self.net = WhisperForConditionalGeneration.from_pretrained(name, dtype=getattr(torch, dtype))
        self.tokenizer, self.feature_extractor = self.processor.tokenizer, self.processor.feature_extractor
        self.language, self.whisper_task = check_language(self.net, name, language, whisper_task)
        if self.language:
            self.tokenizer.set_prefix_tokens(language=self.language, task=self.whisper_task, predict_timestamps=False)
        else:  # English-only: <|startoftranscript|><|notimestamps|>
            self.tokenizer.set_prefix_tokens(predict_timestamps=False)

    @property
    def head_names(self) -> list[str]:
        """No new head: Whisper's output projection is tied to its token embedding, part of the base."""
        return []

    def blocks(self) -> list[str]:
        """Encoder layers, then decoder layers: `method=partial` trains the last decoder layers."""
        base = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        encoder, decoder = base.model.encoder.layers, base.model.decoder.layers
        return ([f"model.encoder.layers.{i}" for i in range(len(encoder))]
                + [f"model.decoder.layers.{i}" for i in range(len(decoder))])

    def encoder(self) -> nn.Module:
        """The audio encoder as training runs it (inside a PEFT wrapper, with its LoRA layers)."""
        base = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        return base.model.encoder

    @property
    def max_label_tokens(self) -> int:
        """The decoder's positions: a transcript longer than this cannot be trained on."""
        return self.net.config.max_target_positions

    def forward(self, batch: dict[str, torch.Tensor]):
        """HF's output; its `.loss` is the mean over the transcript tokens (labels -100 elsewhere)."""
        return self.net(input_features=batch["input_features"], labels=batch.get("labels"))

    @torch.no_grad()
    def transcribe(self, input_features: torch.Tensor) -> list[str]:
        """Greedy transcripts of a batch of log-mel features (B, mels, frames)."""
        options = {"language": self.language, "task": self.whisper_task} if self.language else {}
        room = self.max_label_tokens - len(self.tokenizer.prefix_tokens)  # the decoder has no more positions
        with quiet_transformers():  # generate() warns that max_length (the checkpoint's) is overridden
            ids = self.net.generate(input_features=input_features, max_new_tokens=min(self.max_new_tokens, room),
                                    do_sample=False, num_beams=1, **options)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


class WhisperAudioClassifier(LokalModel):
    """`WhisperForAudioClassification`: the pretrained encoder, mean-pooled over the positions that
    hold the clip (given its frame mask), under a new head (`projector` + `classifier`); the
    decoder is not loaded."""

    modality = "audio"
    task, tasks = "classification", ("classification", "multi_label")  # one logit per class, or per label
    ia3_targets, ia3_feedforward = WhisperASR.ia3_targets, WhisperASR.ia3_feedforward

    def __init__(
        self,
        name: str,
        num_classes: int,
        lora_targets: list[str] | None = None,
        dtype: str = "float32",
        window_seconds: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

        self.name, self.lora_targets = name, list(lora_targets or [])
        window = {} if window_seconds is None else {"chunk_length": self._check_window(window_seconds)}
        with quiet_transformers(), explain_load_errors(name):
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(name, **window)
            self.net, info = WhisperForAudioClassification.from_pretrained(
                name, num_labels=num_classes, dtype=getattr(torch, dtype), output_loading_info=True)
        missing = [k for k in info["missing_keys"] if not k.startswith(tuple(self.head_names))]
        if missing:  # only the new head may start random
            raise LokalError(f"{name}: pretrained encoder weights missing for {missing[:8]}; "
                             "is it a Whisper checkpoint?")
        if window:
            self._shorten_encoder()

    @staticmethod
    def _check_window(seconds: int) -> int:
        """Whisper's feature extractor counts its window in whole seconds."""
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise LokalError(f"model.window_seconds={seconds!r}: give whole seconds >= 1 (e.g. 2 for one-word "
                             "clips), or null for the checkpoint's window (30 s)")
        return seconds

    def _shorten_encoder(self) -> None:
        """Fit the encoder to a window shorter than the checkpoint's (whisper.cpp's `audio_ctx`):
        it keeps its first positions' embeddings. Its cost falls with the window (attention's with
        its square): a 2 s window costs ~1/15 of 30 s, and short clips lose nothing but padding."""
        encoder = self.net.encoder
        positions = self.feature_extractor.nb_max_frames // (encoder.conv1.stride[0] * encoder.conv2.stride[0])
        if positions > encoder.config.max_source_positions:
            seconds = self.feature_extractor.chunk_length * encoder.config.max_source_positions // positions
            raise LokalError(f"model.window_seconds={self.feature_extractor.chunk_length}: {self.name} hears at "
                             f"most {seconds} s; set model.window_seconds <= {seconds} (or null)")
        table = encoder.embed_positions.weight[:positions].detach().clone()
        encoder.embed_positions = nn.Embedding.from_pretrained(table, freeze=True)  # (positions, C)
        encoder.config.max_source_positions = positions  # the encoder checks its input's length against it

    @property
    def head_names(self) -> list[str]:
        return ["projector", "classifier"]

    def blocks(self) -> list[str]:
        return [f"encoder.layers.{i}" for i in range(len(self.encoder().layers))]

    def encoder(self) -> nn.Module:
        """The audio encoder as training runs it (inside a PEFT wrapper, with its LoRA layers)."""
        base = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        return base.encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits (B, classes). With the feature extractor's frame mask (`attention_mask`,
        (B, frames)) the mean is over the encoder positions that hold audio: HF's plain mean over
        all of them is ~97% padding for a 1 s clip in tiny.en's 30 s window, and learns nothing."""
        mask = batch.get("attention_mask")
        if mask is None:
            return self.net(input_features=batch["input_features"]).logits
        # under PEFT the injected layers (LoRA, (IA)^3) and the head copies (modules_to_save) live
        # in the base model: calling its parts runs them
        net = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        hidden = net.projector(self._encoded(net, batch["input_features"]))  # (B, T, P)
        return net.classifier(self._masked_mean(hidden, mask))

    @staticmethod
    def _encoded(net: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """(B, mels, frames) -> (B, T, C) as HF's forward makes it: the last layer, or a learned
        softmax-weighted sum of all layers for checkpoints with `use_weighted_layer_sum`."""
        if not net.config.use_weighted_layer_sum:
            return net.encoder(features).last_hidden_state
        layers = torch.stack(net.encoder(features, output_hidden_states=True).hidden_states, dim=1)  # (B, L+1, T, C)
        return (layers * net.layer_weights.softmax(-1).view(-1, 1, 1)).sum(1)

    @staticmethod
    def _masked_mean(hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, P) -> (B, P): the mean over positions whose log-mel frames hold audio. The
        encoder's convolutions halve the frame rate (stride 2): position t covers frames 2t, 2t + 1."""
        stride = frames.shape[1] // hidden.shape[1]
        keep = frames[:, ::stride].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)


def check_language(net: nn.Module, name: str, language: str | None, whisper_task: str) -> tuple[str | None, str]:
    """English-only checkpoints have no language or task tokens; multilingual ones need a language
    to train on (else Whisper guesses one per clip)."""
    if whisper_task not in TASKS:
        raise LokalError(f"model.whisper_task={whisper_task!r}: choose one of {', '.join(TASKS)}")
    multilingual = bool(getattr(net.generation_config, "is_multilingual", False))
    if not multilingual and (language not in (None, "en", "english") or whisper_task != "transcribe"):
        raise LokalError(f"{name} is an English-only Whisper: it has no language or task tokens, so "
                         f"model.language={language} / model.whisper_task={whisper_task} cannot apply. For other "
                         "languages use a multilingual checkpoint, e.g. model.name=openai/whisper-tiny (online)")
    if not multilingual:
        return None, "transcribe"
    if language is None:
        raise LokalError(f"{name} is multilingual: set the language of your recordings, e.g. model.language=id "
                         "(Indonesian) or model.language=en")
    return language, whisper_task
