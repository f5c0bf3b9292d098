"""Layer 0, the leaves: column names (schema), error classes and their meaning, the driver's
few file operations (fs), and the job tags of a fit's phases. They import nothing of cfspark."""
