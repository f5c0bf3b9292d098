"""Layer 3, the fit paths: from validated ratings and a FitSettings to a FitRecord (factor
tables, item baselines, summary, training pairs), with no pyspark.ml in sight. paths.py
chooses the path; the estimator (ml/) builds the settings and wraps the record in a model."""
