"""Layer 0, pure numpy kernels: losses, block problems, Newton and optimiser steps, fold-in, top-N.

Nothing here imports Spark (tests/test_layering.py refuses it), so every function can be
tested on small arrays.
"""
