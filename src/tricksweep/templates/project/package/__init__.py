"""$package: your model and your data, swept by tricksweep (sweeps/$package.yaml names them)."""
