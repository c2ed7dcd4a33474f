"""Model families: the embedded ShapesWorld model and SD3-family models from local folders."""
