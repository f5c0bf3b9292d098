"""Pure numpy kernels: losses, block gradients, optimiser steps, top-N.

Nothing here imports Spark, so every function can be tested on small arrays.
"""
