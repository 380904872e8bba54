"""Local datasets as LightningDataModules.

- text.py: tables of texts; image.py: image folders; audio_files.py: audio folders; files.py:
  tables of file paths; multilabel.py: several labels per text or image; speech.py: recordings
  with transcripts; instruct.py: instruction pairs for causal LMs
- settings.py: the options every module shares (split, loader, cache, labels), typed and checked
- base.py: the shared loader hooks, balanced sampler and records() table; labelled_files.py: what
  image and audio files share (file checks, class folders, splits, loaders)
- splits.py: train/val/test, group-aware and k-fold splits; tables.py: reading CSV/TSV/JSONL/Parquet/SQLite
- checks.py: is a file usable; cache.py: token and image caches; augment.py: augmentation and slang

This package imports nothing heavy, so `lokal audit` reads a table without loading torch.
"""
