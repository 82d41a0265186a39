"""Loading trained models for use without the training stack (L2, inference)."""
