"""Torch models (recommender, churn), feature building, training and evaluation
loops, and metrics. No Flower, no I/O policy."""
