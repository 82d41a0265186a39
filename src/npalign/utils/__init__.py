"""Small helpers shared by every layer (L0, utils)."""
