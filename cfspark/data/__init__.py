"""DataFrame-side preparation: reading, validation, split, item means, dense ids."""
