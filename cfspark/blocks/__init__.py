"""Layer 1, setup: users and items placed in blocks, and ratings packed into them once (ALS's
InBlock and OutBlock), with the hashes and the binary codec the packing tasks use."""
