"""Layer 1, ratings as DataFrames: read, validate, split, item baselines (means, offsets),
weights, sampled negatives and exposure labels, synthetic data, and the metrics over them."""
