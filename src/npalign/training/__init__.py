"""Training loops for reward models and policies, on accelerate (L2, training)."""
