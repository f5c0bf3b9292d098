"""Layer 4, the pyspark.ml face: Params (the model's, which the estimator's extend), the
estimator, the model and its exposure-aware kind, their persistence, and top-N. The
estimator validates its input and hands over to fit/; the model wraps what comes back."""
