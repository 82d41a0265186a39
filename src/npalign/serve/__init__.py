"""HTTP serving of reward models and policies: `npalign serve` (L3, serve)."""
