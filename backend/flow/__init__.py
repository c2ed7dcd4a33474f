"""The flow-matching schedule shared by training and sampling: densities of t, the resolution
shift and the sampling grid. It sits below models, sampling and training so that all three use one
shift rule (see docs/methods.md)."""
