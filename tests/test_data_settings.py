"""The options data modules share (lokal.data.settings): every shipped data config's keys are
exactly what its module takes, a module's defaults match its config's, and a wrong key or value
fails by name when a module is built from Python as when a config is composed."""

from __future__ import annotations

import dataclasses

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from lokal.data.settings import DataSettings, LoaderSettings, SplitSettings, option_names
from lokal.errors import LokalError
from tests.conftest import CONF, compose

DATA_CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# configs that name their module themselves (the others inherit a parent's and may change its values)
OWN_TARGETS = [name for name in DATA_CONFIGS if "_target_" in OmegaConf.load(CONF / "data" / f"{name}.yaml")]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_holds_exactly_its_modules_keys(name, tmp_path):
    data = compose([f"data={name}"], tmp_path).data
    module = get_class(data._target_)
    assert sorted(k for k in data if k != "_target_") == sorted(option_names(module))


@pytest.mark.parametrize("name", OWN_TARGETS)
def test_settings_defaults_match_the_config(name, tmp_path):
    data = compose([f"data={name}"], tmp_path).data
    for group in get_class(data._target_).settings.groups().values():
        for field in dataclasses.fields(group):
            assert data[field.name] == getattr(group, field.name), f"{name}: {field.name}"


def test_settings_sort_flat_keys_into_their_groups():
    defaults = DataSettings(SplitSettings(), LoaderSettings(batch_size=8))
    taken = defaults.take({"batch_size": 4, "folds": 3, "seed": 7}, DataSettings)
    assert (taken.loader.batch_size, taken.split.folds, taken.split.seed) == (4, 3, 7)
    assert taken.cache is None and defaults.loader.batch_size == 8  # the class's defaults stay


def test_a_misspelled_key_names_the_nearest_and_every_key(tmp_path):
    from lokal.data.speech import SpeechDataModule
    from lokal.data.text import TextDataModule

    with pytest.raises(LokalError, match=r"data.batch_sise: TextDataModule has no such option \(did you mean "
                                         r"data.batch_size\?\); it takes path, text_column, .*, balance"):
        TextDataModule(str(tmp_path / "t.csv"), batch_sise=8)
    with pytest.raises(LokalError, match="data.folds: SpeechDataModule has no such option"):  # no k-fold there
        SpeechDataModule(str(tmp_path / "t.csv"), folds=5)


@pytest.mark.parametrize("options,message", [
    ({"batch_size": 0}, r"data.batch_size=0 is out of range: it must be a whole number >= 1, e.g. data.batch_size=16"),
    ({"num_workers": -1}, r"data.num_workers=-1 is out of range"),
    ({"val_fraction": 1.5}, r"data.val_fraction=1.5 is out of range: it must be a fraction in \[0, 1\)"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, r"data.val_fraction \+ data.test_fraction = 1 leaves nothing"),
])
def test_values_out_of_range_fail_before_the_data_is_read(tmp_path, options, message):
    from lokal.data.image import ImageFolderDataModule
    from lokal.training.config_checks import check_ranges

    with pytest.raises(LokalError, match=message):
        ImageFolderDataModule(str(tmp_path / "not-read"), **options)
    cfg = compose(["data=image_folder"] + [f"data.{key}={value}" for key, value in options.items()], tmp_path)
    with pytest.raises(LokalError, match=message):  # the same rule, before anything loads
        check_ranges(cfg)
