"""Layer 5, the job: its config (default.toml, the shipped defaults, documents every key),
the command line and exit codes (cli), one run from read to write (run), where results go
(output) and what guards them (guard), the Python workers started while a job reads (warm),
and the train and generate mains."""
