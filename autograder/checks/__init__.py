"""Hidden checks, one module per chapter exercise."""
