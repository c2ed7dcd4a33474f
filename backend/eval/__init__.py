"""Evaluation: ShapesEval (detector-judged prompt fidelity) and Fréchet distance in encoder space."""
