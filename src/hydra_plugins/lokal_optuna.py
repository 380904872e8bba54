"""Hydra instantiates sweepers only from the `hydra_plugins` namespace (and scans it at every
start, so this module stays cheap to import); the code lives in lokal.sweepers.optuna."""

from lokal.sweepers.optuna import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """`hydra/sweeper=lokal_optuna` (src/lokal/conf/hydra/sweeper/lokal_optuna.yaml)."""
