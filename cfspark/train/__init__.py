"""Layer 2, the distributed engine: the alternating loop over cached blocks (trainer), the
half-step's numpy step and Arrow bodies, the one-task loop, checkpoints, warm start, fold-in,
and factor tables. It knows StepConfig, never the estimator's Params."""

# What a Python worker imports to run a fit's tasks: the modules of the bodies Spark pickles
# (each imports the kernels it uses). The train job starts workers with them imported while it
# reads its input (app/warm.py); tests/test_warm_workers.py checks that a fit sends no others.
WORKER_MODULES = (
    "cfspark.train.arrow_bodies",
    "cfspark.train.bce_task",
    "cfspark.train.search_task",
    "cfspark.train.factors",
    "cfspark.blocks.build",
)
