"""Fréchet distance between two sets of feature vectors (the FID formula, in any encoder's space)."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least two feature vectors, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))
