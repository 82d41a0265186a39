"""Adapters that let RL trainers call npalign reward models, e.g. TRL's reward functions (L3.5, integrations)."""
