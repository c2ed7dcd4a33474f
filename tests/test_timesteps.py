"""Timestep densities, the resolution shift and the effective density the Studio plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.flow.timesteps import (
    DENSITIES,
    base_density,
    dynamic_alpha,
    effective_density,
    resolution_alpha,
    sample_t,
    sampling_schedule,
    shift,
    unshift,
)

PARAMS = {"uniform": {}, "logit_normal": {"m": 0.5, "s": 0.8}, "mode": {"mode_scale": 1.29}, "cosmap": {}}


@pytest.mark.parametrize("kind", DENSITIES)
@pytest.mark.parametrize("alpha", [1.0, 3.0, 0.5])
def test_samples_follow_the_plotted_density(kind: str, alpha: float):
    gen = torch.Generator().manual_seed(0)
    t = shift(sample_t(kind, 200_000, gen, **PARAMS[kind]), alpha).numpy()
    assert t.min() >= 0 and t.max() <= 1
    hist, edges = np.histogram(t, bins=20, range=(0, 1), density=True)
    centers = (edges[:-1] + edges[1:]) / 2
    pdf = effective_density(kind, centers, alpha, **PARAMS[kind])
    # compare bin masses (robust where the pdf is steep)
    mass_hist = hist / 20
    fine = np.linspace(0, 1, 20001)
    pdf_fine = effective_density(kind, fine, alpha, **PARAMS[kind])
    mass_pdf = np.array([np.trapezoid(pdf_fine[(fine >= a) & (fine <= b)], fine[(fine >= a) & (fine <= b)]) for a, b in zip(edges[:-1], edges[1:])])
    assert np.abs(mass_hist - mass_pdf).max() < 0.01, (kind, alpha, mass_hist.round(3), mass_pdf.round(3))
    assert np.isfinite(pdf).all()


@pytest.mark.parametrize("kind", DENSITIES)
def test_density_integrates_to_one(kind: str):
    t = np.linspace(1e-5, 1 - 1e-5, 200_001)
    for alpha in (1.0, 2.0, 4.0):
        assert abs(np.trapezoid(effective_density(kind, t, alpha, **PARAMS[kind]), t) - 1) < 0.01


def test_logit_normal_location_moves_mass_toward_noise():
    gen = torch.Generator().manual_seed(1)
    assert sample_t("logit_normal", 50_000, gen, m=1.0).mean() > 0.65
    assert sample_t("logit_normal", 50_000, gen, m=-1.0).mean() < 0.35
    assert abs(sample_t("logit_normal", 50_000, gen).mean() - 0.5) < 0.01


def test_shift_formula_matches_the_noise_argument():
    # a flat image of n pixels: the mean of the noised pixels estimates c with std t / ((1 - t) sqrt(n)).
    n, m = 32 * 32, 64 * 64
    alpha = resolution_alpha(m, n)
    assert alpha == pytest.approx(2.0)
    for t_n in (0.1, 0.3, 0.5, 0.8):
        t_m = float(shift(t_n, alpha))
        assert t_m / ((1 - t_m) * math.sqrt(m)) == pytest.approx(t_n / ((1 - t_n) * math.sqrt(n)))
        assert float(unshift(t_m, alpha)) == pytest.approx(t_n)
    assert float(shift(0.0, 3.0)) == 0.0 and float(shift(1.0, 3.0)) == 1.0
    assert float(shift(0.5, 3.0)) == pytest.approx(0.75)


def test_dynamic_shift_is_flux_rule():
    assert dynamic_alpha(256) == pytest.approx(math.exp(0.5))
    assert dynamic_alpha(4096) == pytest.approx(math.exp(1.15))
    assert dynamic_alpha(1024) > dynamic_alpha(256)


def test_sampling_schedule_is_shifted_like_training():
    sched = sampling_schedule(10, 3.0)
    assert sched[0] == 1.0 and sched[-1] == 0.0 and len(sched) == 11
    assert torch.all(sched[1:] < sched[:-1])
    assert torch.allclose(sched, shift(torch.linspace(1, 0, 11), 3.0))


def test_mode_density_with_zero_scale_is_uniform():
    t = np.linspace(0.01, 0.99, 50)
    assert np.allclose(base_density("mode", t, mode_scale=0.0), 1.0, atol=1e-3)
