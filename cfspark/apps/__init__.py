"""The command-line applications: one module per job, each with a main(argv) -> exit code.

They are the console scripts (cfspark-train, cfspark-benchmark, cfspark-profile,
cfspark-generate) and what jobs/*.py hand over to under spark-submit.
"""
