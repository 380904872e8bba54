"""Training loaders whose order and augmentation are a pure function of (seed, epoch, position),
so a run killed mid-epoch continues with exactly the batches it would have seen.

Three pieces: `SeededSampler` re-seeds the inner sampler's generator each epoch and hands out
`(index, sample_seed)` keys; `SeededDataset` seeds torch/numpy/random from that key before
loading the item (augmentations no longer depend on how many batches came before, or on which
worker loads them); `ResumableLoader` is a DataLoader with Lightning's `state_dict` /
`load_state_dict` interface, so the trainer's checkpoint records how far into the epoch training
got and a resumed loader skips exactly that many batches without loading them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over each part): neighbouring inputs give
    unrelated seeds, and unlike hash() it is the same in every process."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & MASK64
        state ^= state >> 29
    return state >> 1


def seed_all(seed: int) -> None:
    """Seed torch (CPU, and CUDA once in use), numpy and random: everything an augmentation may
    draw from. Not `torch.manual_seed`: before CUDA/XPU start it queues a lazy seed call per
    device with a formatted stack trace, 1.8 ms per call under Lightning's deep stack: 4.5 s of
    a 37 s MiniLM run seeding each of its 2,517 samples."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class SeededSampler(DistributedSampler):
    """Wraps a sampler that draws from `inner.generator` (RandomSampler, WeightedRandomSampler,
    LengthGroupedSampler): epoch e's order depends only on (seed, e), and each position gets its
    own sample seed. `skip` of this process's samples are left out of the next pass (a resumed epoch).

    Under DDP it shards itself: rank r takes every world-th position of the one global order, so
    the ranks' batches together are exactly the batches one process would train on (with the
    batch size divided by the world size). It subclasses DistributedSampler only so that
    Lightning leaves it as it is instead of wrapping it in one."""

    def __init__(self, inner: Sampler, seed: int) -> None:  # no super().__init__: no process group needed
        if getattr(inner, "generator", None) is None:
            raise TypeError(f"{type(inner).__name__} has no generator to seed: pass generator=torch.Generator()")
        self.inner, self.seed = inner, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / world()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.inner.generator.manual_seed(mix_seed(self.seed, self.epoch))
        skip, self.skip = self.skip, 0
        rank, size = world()
        order = list(self.inner)
        order += order[: len(self) * size - len(order)]  # every rank the same number of samples
        for position in range(rank + skip * size, len(order), size):
            yield int(order[position]), mix_seed(self.seed, self.epoch, position, 1)


def global_batch_size(batch_size: int) -> int:
    """Samples per step over all DDP processes: length grouping in windows of this size keeps the
    global batches the same whatever the number of processes."""
    return batch_size * world()[1]


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SeededDataset(Dataset):
    """Loads item `index` after seeding every RNG from the key's sample seed."""

    def __init__(self, items: Sequence) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        seed_all(sample_seed)
        return self.items[index]


class ResumableLoader(DataLoader):
    """A training DataLoader over `SeededDataset` + `SeededSampler` that Lightning saves in its
    checkpoints. `batches_done` is set by `lokal.training.resume.ExactResume` after every training batch
    (the loader itself cannot tell: Lightning fetches one batch ahead)."""

    epoch: int = 0
    batches_done: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.batches_done * self.batch_size  # skipped samples are never loaded


def resumable_loader(items: Sequence, sampler: Sampler, seed: int, batch_size: int, **kwargs) -> ResumableLoader:
    """The training loader every lokal data module uses: `sampler` must draw from its `generator`."""
    return ResumableLoader(SeededDataset(items), batch_size=batch_size, sampler=SeededSampler(sampler, seed), **kwargs)


def length_grouped_loader(rows: list[dict], train: bool, seed: int, batch_size: int,
                          sampler: Sampler | None = None, **kwargs) -> DataLoader:
    """Token rows in batches of similar length: padding a 40-token batch to its one 128-token
    text tripled the step time on the shipped corpus. Training order stays random across groups
    (HF's LengthGroupedSampler), unless `sampler` is given (e.g. a balanced one: lengths then
    mix); evaluation goes shortest first."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [len(r["input_ids"]) for r in rows]
    if not train:
        return DataLoader(rows, sampler=sorted(range(len(rows)), key=lengths.__getitem__), batch_size=batch_size,
                          **kwargs)
    if sampler is None:
        sampler = LengthGroupedSampler(global_batch_size(batch_size), lengths=lengths, generator=torch.Generator())
    return resumable_loader(rows, sampler, seed, batch_size=batch_size, **kwargs)
