"""Events: the pipeline, builders, shipper, readers and the predictor seam."""
