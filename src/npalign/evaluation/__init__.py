"""Evaluation against context size, reports and plots (L3, evaluation)."""
