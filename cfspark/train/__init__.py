"""Layer 2, the distributed engine: the alternating loop over cached blocks (trainer), the
half-step's numpy step and Arrow bodies, the one-task loop, checkpoints, warm start, fold-in,
and factor tables. It knows StepConfig, never the estimator's Params."""
