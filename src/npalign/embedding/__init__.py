"""Frozen text embedders, their offline default models, the disk cache and features (L1, embedding)."""
