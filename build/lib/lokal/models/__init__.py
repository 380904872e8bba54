"""Base models. Every model class offers the same small surface:

- `modality`: "text" or "image", and `task`: "classification" or "causal_lm", both checked
  against the data before training;
- `net`: the wrapped library model (HF / timm), the one thing a method changes;
- `head_names`: modules of the new task head, which always train (none for causal LMs);
- `blocks()`: name prefixes of the repeated blocks in order (partial, LLRD, side network, adapters);
- `forward(batch)`: class logits (B, num_classes) for classifiers, the HF output (loss, logits)
  for causal LMs.
"""
