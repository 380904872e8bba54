"""lokal: fine-tune pretrained models on your own local data.

    import lokal
    metrics = lokal.train(["data=text_csv", "data.path=reviews.csv", "method=bitfit"])
    run = lokal.load_run("outputs/runs/2026-12-06_10-00-00_text_csv_minilm_bitfit")
    run.predict(["pelayanannya cepat, mantap", "lemot banget"])   # a DataFrame of probabilities
    findings = lokal.audit_data("reviews.csv")                    # duplicates, leakage, PII, ...

Importing this package stays cheap (no torch): heavy libraries are imported inside the
functions that need them, so `train.py --help` answers fast.
"""

from lokal.errors import LokalError

__version__ = "0.1.0"
__all__ = ["LokalError", "__version__", "audit_data", "load_run", "train"]


def train(overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None) -> dict:
    """Train as `python train.py OVERRIDES...` does; returns the metrics also in metrics.json.
    `run_dir`: where the run goes (default: a new folder under outputs/runs/, as the CLI)."""
    from lokal.api import train as train_from_overrides

    return train_from_overrides(list(overrides), run_dir)


def load_run(run_dir: str):
    """A finished run (`lokal.runs.finished.Run`): `.config`, `.metrics`, `.predict(texts or image paths)`."""
    from lokal.runs.finished import Run

    return Run.open(run_dir)


def audit_data(source: str | list[str], **options) -> dict:
    """`lokal audit` as a function: a table, a folder, or data config overrides (["data=NAME", ...]);
    returns the findings (what audit.json holds). Options: text_column, label_column, file_column,
    split_column, table, encoding, near, label_errors."""
    from lokal.api import audit_data as audit

    return audit(source, **options)
