"""Local datasets as LightningDataModules.

- text.py: tables of texts; image.py: image folders; files.py: tables of file paths;
  instruct.py: instruction pairs for causal LMs
- base.py: the shared loader hooks, balanced sampler and records() table
- splits.py: train/val/test, group-aware and k-fold splits; tables.py: reading CSV/TSV/JSONL/Parquet/SQLite
- checks.py: is a file usable; cache.py: token and image caches; augment.py: augmentation and slang

This package imports nothing heavy, so `lokal audit` reads a table without loading torch.
"""
