"""Preference data: loaders, splits, episode sampling, synthetic tasks, dataset builders (L1, data)."""
