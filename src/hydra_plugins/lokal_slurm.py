"""Hydra instantiates launchers only from the `hydra_plugins` namespace (and scans it at every
start, so this module stays cheap to import); the code lives in lokal.training.slurm."""

from lokal.training.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """`hydra/launcher=slurm` (src/lokal/conf/hydra/launcher/slurm.yaml)."""
