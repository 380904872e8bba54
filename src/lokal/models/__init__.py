"""Base models with a task head. Every model class offers the same small surface:

- `modality`: "text" or "image", checked against the data before training;
- `net`: the wrapped library model (HF / timm), the one thing a method changes;
- `head_names`: modules of the new task head, which always train;
- `blocks()`: name prefixes of the repeated blocks in order (for partial fine-tuning);
- `forward(batch) -> logits` of shape (B, num_classes).
"""
