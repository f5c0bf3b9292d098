"""Layer 5, measurement: cfspark against Spark ALS on one split (benchmark, compare, plot) and
where a fit's time goes (profile), each with its main."""
