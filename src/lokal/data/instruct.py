"""Instruction pairs (JSONL, CSV, Parquet ...: a prompt and a response per row) for causal-LM
fine-tuning, with the loss on the response tokens only."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lokal.data.base import SplitDataModule
from lokal.data.resumable import length_grouped_loader
from lokal.data.settings import DataSettings, HoldoutSettings, LoaderSettings, check_fractions
from lokal.data.tables import fold_text, read_table, require_columns
from lokal.errors import LokalError

log = logging.getLogger(__name__)
IGNORE = -100  # label of tokens the loss skips (prompt, padding): PyTorch's and HF's ignore_index


class InstructionDataModule(SplitDataModule):
    """Reads the table once, drops empty and duplicate pairs, splits by seed, tokenises once.

    Each example is the user turn and the assistant turn of the tokenizer's chat template when it
    has one (and `use_chat_template`), else `prompt + "\\n" + response + eos`.
    """

    modality = "text"
    task = "causal_lm"

    settings = DataSettings(HoldoutSettings(val_fraction=0.1, test_fraction=0.1), LoaderSettings(batch_size=8))

    def __init__(
        self,
        path: str | None,
        prompt_column: str = "prompt",
        response_column: str = "response",
        table: str | None = None,
        dedup: bool = True,
        use_chat_template: bool = True,
        generate_examples: int = 5,
        max_new_tokens: int = 48,
        packing: bool = False,
        **options,
    ) -> None:
        """`packing`: each batch's examples concatenated into one padding-free row (`pack`).
        `options`: the shared settings (`settings`: split and loader keys; no k-fold)."""
        super().__init__(**options)
        self.path, self.table = path, table
        self.prompt_column, self.response_column = prompt_column, response_column
        self.dedup, self.use_chat_template, self.packing = dedup, use_chat_template, packing
        # shown after training: greedy answers to the first test prompts, next to the references
        self.generate_examples, self.max_new_tokens = generate_examples, max_new_tokens
        self.tokenizer, self.max_length = None, 256
        self.stats: dict[str, int] = {}
        self.frame = self._load()
        self.splits = self._split()

    def use_model(self, model) -> None:
        self.tokenizer, self.max_length = model.tokenizer, model.max_length

    def pairs(self, split: str) -> list[tuple[str, str]]:
        frame = self.splits[split]
        return list(zip(frame[self.prompt_column], frame[self.response_column], strict=True))

    # -- loading -------------------------------------------------------------
    def _load(self) -> pd.DataFrame:
        frame = read_table(self.path, self.table)
        require_columns(frame, {"prompt_column": self.prompt_column, "response_column": self.response_column},
                        self.path)
        frame = frame[[self.prompt_column, self.response_column]].fillna("").astype(str)
        frame = frame.apply(lambda column: column.str.strip())
        self.stats["rows"] = len(frame)
        empty = (frame[self.prompt_column] == "") | (frame[self.response_column] == "")
        self.stats["empty_dropped"] = int(empty.sum())
        frame = frame[~empty]
        if self.dedup:
            key = fold_text(frame[self.prompt_column] + "\0" + frame[self.response_column])
            self.stats["duplicates_dropped"] = int(key.duplicated().sum())
            frame = frame[~key.duplicated()]
        log.info("%s: %d pairs kept (%d empty, %d duplicate dropped)", self.path, len(frame),
                 self.stats["empty_dropped"], self.stats.get("duplicates_dropped", 0))
        return frame.reset_index(drop=True)

    def _split(self) -> dict[str, pd.DataFrame]:
        index = random_split(len(self.frame), where=str(self.path), **asdict(self.settings.split))
        frames = {name: self.frame.iloc[rows] for name, rows in index.items()}
        self.stats |= {f"{name}_rows": len(f) for name, f in frames.items()}
        return frames

    # -- encoding --------------------------------------------------------------
    @property
    def chat(self) -> bool:
        return self.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of everything before the response: what generation starts from."""
        return self._ids(self._render(prompt, None)[0], bos=not self.chat)

    def encode(self, prompt: str, response: str) -> dict[str, list[int]]:
        """input_ids and labels; labels are IGNORE on the prompt, the response's own ids after it."""
        prompt_ids = self.encode_prompt(prompt)
        # a template ends the answer with its own end-of-turn token; plain text needs eos to stop at
        end = [] if self.chat else [self.tokenizer.eos_token_id]
        response_ids = self._ids(self._render(prompt, response)[1]) + end
        ids = (prompt_ids + response_ids)[: self.max_length]
        labels = ([IGNORE] * len(prompt_ids) + response_ids)[: self.max_length]
        return {"input_ids": ids, "labels": labels}

    def stop_ids(self) -> list[int]:
        """Where a generated answer ends: eos, and the template's end-of-turn token after a response."""
        stops = [self.tokenizer.eos_token_id]
        if self.chat:
            marker = "<<answer>>"
            after_answer = self._render("x", marker)[1].split(marker, 1)[1].strip()
            stops += self._ids(after_answer)[:1]
        return list(dict.fromkeys(stops))

    def _render(self, prompt: str, response: str | None) -> tuple[str, str]:
        """(prompt text, response text): the template's text split where the response starts."""
        if not self.chat:
            return prompt + "\n", response or ""
        user = [{"role": "user", "content": prompt}]
        prompt_text = self.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if response is None:
            return prompt_text, ""
        full = self.tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                                  tokenize=False)
        if not full.startswith(prompt_text):
            raise LokalError(f"the chat template of {self.tokenizer.name_or_path} does not extend the prompt "
                             "with the answer, so the answer's tokens cannot be told apart; set "
                             "data.use_chat_template=false")
        return prompt_text, full[len(prompt_text):]

    def _ids(self, text: str, bos: bool = False) -> list[int]:
        # Templates write their special tokens (<bos>, <start_of_turn>) as text: no more are added.
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos_id = self.tokenizer.bos_token_id
        return [bos_id] + ids if bos and bos_id is not None else ids

    # -- Lightning hooks ---------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("call use_model(model) before setup: the tokenizer comes from the model")
        if not hasattr(self, "datasets"):
            self.datasets = {name: self._encode_split(name) for name in self.splits}

    def _encode_split(self, split: str) -> list[dict]:
        rows = [self.encode(p, r) for p, r in self.pairs(split)]
        kept = [r for r in rows if any(y != IGNORE for y in r["labels"])]
        if len(kept) < len(rows):  # a prompt filling max_length leaves no answer to learn
            self.stats[f"{split}_too_long_dropped"] = len(rows) - len(kept)
            log.warning("%s: %d prompts fill model.max_length=%d and were dropped; raise model.max_length",
                        split, len(rows) - len(kept), self.max_length)
        return kept

    def _collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Right padding; padded positions are masked out of attention and loss."""
        if self.packing:
            return pack(rows)
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}  # each (B, T)

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Batches of similar length, as in TextDataModule: random groups in training, shortest first after."""
        return length_grouped_loader(self.datasets[split], train, self.settings.split.seed, collate_fn=self._collate,
                                     **self.settings.loader.kwargs())


def pack(rows: list[dict]) -> dict[str, torch.Tensor]:
    """The rows concatenated into one row without padding (transformers' DataCollatorWithFlattening).

    `position_ids` restart at 0 for each example and there is no attention_mask: from them
    transformers' mask builder (masking_utils, sdpa / eager / flex) makes a block-diagonal causal
    mask, and flash-attention runs varlen, so no example attends to another. Each example's first
    label is IGNORE, so the loss never scores a token predicted from the previous example. The
    mean loss over response tokens equals the padded batch's (tests/test_gpu_path.py)."""
    ids = [i for r in rows for i in r["input_ids"]]
    labels = [y for r in rows for y in [IGNORE, *r["labels"][1:]]]
    positions = [t for r in rows for t in range(len(r["input_ids"]))]
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions])}  # each (1, sum of lengths)


def random_split(n: int, val_fraction: float, test_fraction: float, seed: int, where: str) -> dict[str, np.ndarray]:
    """Shuffled indices for train/val/test; a non-zero fraction gets at least one row."""
    check_fractions(val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = (max(1, round(f * n)) if f else 0 for f in (val_fraction, test_fraction))
    if n - n_val - n_test < 1:
        raise LokalError(f"{where}: {n} pairs leave no training data after val/test splits; add pairs or "
                         "lower data.val_fraction / data.test_fraction")
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
