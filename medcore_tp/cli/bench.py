"""``medcore-tp bench`` (placeholder until written)."""
