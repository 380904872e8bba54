"""The options data modules share, as one typed object: `DataSettings` groups how rows are split
(`HoldoutSettings`, or `SplitSettings` with k-fold), which tables hold which split
(`SplitFileSettings`, table modules), how batches are loaded (`LoaderSettings`), where decoded
data is cached (`CacheSettings`) and which classes train, how often (`LabelSettings`). Each
module states the groups it takes and its defaults as a class attribute (`settings =
DataSettings(...)`); a group it lacks is None, so its keys fail by name.

Configs keep these as flat keys (`data.batch_size=16`, `data.folds=5`; conf/data/settings/ holds
one file per group), so saved run configs load as they are: a module takes them as keywords and
`DataSettings.take` sorts them into their groups. Values are checked here, once; the same rules
check a composed config before anything loads (lokal.training.config_checks)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from lokal.errors import LokalError
from lokal.paths import data_cache_dir

Rule = tuple[Callable[[object], bool], str, str]  # (test, what the value must be, an example)


def whole(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def number(check: Callable[[float], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and check(v)


RANGES: dict[str, Rule] = {
    "batch_size": (whole(1), "a whole number >= 1", "16"),
    "num_workers": (whole(0), "a whole number >= 0", "0"),
    "val_fraction": (number(lambda v: 0 <= v < 1), "a fraction in [0, 1)", "0.15"),
    "test_fraction": (number(lambda v: 0 <= v < 1), "a fraction in [0, 1)", "0.2"),
}


def check_range(key: str, value: object, rule: Rule) -> None:
    """A LokalError naming the key, what it must be and an example, when `value` breaks `rule`."""
    test, must_be, example = rule
    if not test(value):
        raise LokalError(f"{key}={value!r} is out of range: it must be {must_be}, e.g. {key}={example}")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Each held-out fraction in [0, 1), and rows left over to train on."""
    check_range("data.val_fraction", val_fraction, RANGES["val_fraction"])
    check_range("data.test_fraction", test_fraction, RANGES["test_fraction"])
    if val_fraction + test_fraction >= 1:
        raise LokalError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} leaves nothing "
                         "to train on: keep their sum below 1, e.g. data.val_fraction=0.15 data.test_fraction=0.2")


@dataclass(frozen=True, kw_only=True)
class HoldoutSettings:
    """One train/val/test split by seed: stratified by label, group-aware with a group column."""

    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 42  # the split's, and the training order's

    def __post_init__(self) -> None:
        check_fractions(self.val_fraction, self.test_fraction)


@dataclass(frozen=True, kw_only=True)
class SplitSettings(HoldoutSettings):
    """A held-out split, or k-fold: with folds >= 2, test is fold `fold` of a stratified k-fold
    (lokal.data.splits checks both against the data; lokal.training.crossval runs every fold)."""

    folds: int = 0
    fold: int = 0


@dataclass(frozen=True, kw_only=True)
class SplitFileSettings:
    """One table per split, named (`data.path=DIR` finds them by name instead: train, val / valid /
    dev, test; lokal.data.tables.split_files). A missing val or test table is carved from train."""

    train_path: str | None = None
    val_path: str | None = None
    test_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class LoaderSettings:
    """How batches are loaded; pin_memory speeds host-to-GPU copies."""

    batch_size: int = 32
    num_workers: int = 0
    pin_memory: bool = False

    def __post_init__(self) -> None:
        for key in ("batch_size", "num_workers"):
            check_range(f"data.{key}", getattr(self, key), RANGES[key])

    def kwargs(self) -> dict[str, int | bool]:
        """The DataLoader keywords."""
        return {"batch_size": self.batch_size, "num_workers": self.num_workers, "pin_memory": self.pin_memory}


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """Whether decoded data (token ids, shrunk images, file checks) is kept between runs, and where."""

    cache: bool = True
    cache_dir: str | None = None  # None: $LOKAL_DATA_CACHE, else ~/.cache/lokal/data

    @property
    def folder(self) -> Path | None:
        """The cache folder; None: no cache."""
        if not self.cache:
            return None
        return Path(self.cache_dir).expanduser() if self.cache_dir else data_cache_dir()


@dataclass(frozen=True, kw_only=True)
class LabelSettings:
    """Which classes single-label data trains on, and how often training sees each."""

    classes: list[str] | None = None  # fixes the class order; any other label is an error naming its rows
    balance: bool = False  # a sampler that draws every class equally often in training


@dataclass(frozen=True)
class DataSettings:
    """The shared options of one data module, by group; None: the module takes none of that group."""

    split: HoldoutSettings = HoldoutSettings()
    loader: LoaderSettings = LoaderSettings()
    cache: CacheSettings | None = None
    labels: LabelSettings | None = None
    files: SplitFileSettings | None = None

    def groups(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def take(self, options: dict, owner: type) -> DataSettings:
        """These defaults with `options` (flat config keys) put in their groups and checked; a key
        no group takes is a LokalError that names the keys `owner` (a data module class) takes."""
        left = dict(options)
        taken = {name: replace(group, **{f.name: left.pop(f.name) for f in fields(group) if f.name in left})
                 for name, group in self.groups().items()}
        if left:
            key = sorted(left)[0]
            names = option_names(owner)
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean data.{close[0]}?)" if close else ""
            raise LokalError(f"data.{key}: {owner.__name__} has no such option{hint}; it takes {', '.join(names)}")
        return replace(self, **taken)


def option_names(owner: type) -> list[str]:
    """Every config key a data module class takes: its own keywords, then its settings' fields."""
    own = [p.name for p in list(inspect.signature(owner.__init__).parameters.values())[1:]
           if p.kind is not p.VAR_KEYWORD]
    return own + [f.name for group in owner.settings.groups().values() for f in fields(group)]
