"""Command-line interface (L4, cli)."""
