"""Training and evaluation engine: metrics, loops and result records."""
