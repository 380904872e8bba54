"""Hydra sweepers written for lokal: `optuna` (a resumable TPE search with pruning) and
`pruning` (the Lightning callback that reports each trial's validation metric to it)."""
