"""Reward models, context encoder, FiLM-conditioned policies and their losses (L1, models)."""
