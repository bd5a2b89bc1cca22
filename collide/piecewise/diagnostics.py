"""Whether Markov chains mixed: rank-normalised split-R̂ and bulk ESS, and the MCSE of means.

References:
    Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021), "Rank-normalization, folding,
    and localization: an improved R̂", Bayesian Analysis 16(2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats


def diagnose(dist: np.ndarray, pair: np.ndarray, proj: np.ndarray) -> dict[str, Any]:
    """R̂ and ESS of the sampled statistics, and the estimates with their MCSE.

    Shapes: dist (chains, n); pair (chains // 2, n); proj (w, chains, n)
    """
    stats = {"distance_to_target": dist[None], "pairwise_distance": pair[None], "projections": proj}
    out: dict[str, Any] = {"rhat_by": {}, "ess_by": {}}
    for name, draws in stats.items():
        if draws.size == 0 or draws.shape[1] == 0:
            continue
        rhat, ess = rank_rhat(draws), ess_bulk(draws)
        out["rhat_by"][name], out["ess_by"][name] = float(np.max(rhat)), float(np.min(ess))
    # NaN (too few draws to tell) propagates: it never passes for converged.
    out["rhat"] = float(np.max(list(out["rhat_by"].values()))) if out["rhat_by"] else float("nan")
    out["ess"] = float(np.min(list(out["ess_by"].values()))) if out["ess_by"] else float("nan")
    for name, draws in (("mean_distance_to_target", dist), ("mean_pairwise_distance", pair)):
        if draws.size:
            out[name] = float(draws.mean())
            out[f"{name}_mcse"] = float(draws.std() / np.sqrt(ess_mean(draws[None])[0]))
        else:
            out[name] = out[f"{name}_mcse"] = float("nan")
    return out


def _split(draws: np.ndarray) -> np.ndarray:
    """Each chain cut in two halves. (s, chains, n) -> (s, 2 chains, n // 2)"""
    n = draws.shape[-1] // 2
    return np.concatenate([draws[..., :n], draws[..., draws.shape[-1] - n :]], 1)


def _rank_normal(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised draws, pooled per statistic (ties averaged). (s, m, n) -> (s, m, n)"""
    flat = draws.reshape(len(draws), -1)
    ranks = scipy.stats.rankdata(flat, axis=1)
    return scipy.special.ndtri((ranks - 0.375) / (flat.shape[1] + 0.25)).reshape(draws.shape)


def _rhat(draws: np.ndarray) -> np.ndarray:
    """Gelman–Rubin R̂ of (s, chains, n) draws, per statistic. (s, m, n) -> (s,)"""
    n = draws.shape[-1]
    within = draws.var(-1, ddof=1).mean(-1)
    between = n * draws.mean(-1).var(-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = np.sqrt(((n - 1) / n * within + between / n) / within)
    return np.where(within > 0, rhat, np.where(between > 0, np.inf, 1.0))


def rank_rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split-R̂: the larger of the bulk's (rank-normalised split chains)
    and the tails' (the same of |draw − median|), Vehtari et al. (2021), eq. 4–5.
    (s, chains, n) -> (s,); NaN where a chain has fewer than 4 draws."""
    if draws.shape[-1] < 4:
        return np.full(len(draws), np.nan)
    split = _split(draws)
    folded = np.abs(split - np.median(split.reshape(len(split), -1), axis=1)[:, None, None])
    return np.maximum(_rhat(_rank_normal(split)), _rhat(_rank_normal(folded)))


def _ess(draws: np.ndarray) -> np.ndarray:
    """ESS of (s, chains, n) draws from the chains' pooled autocorrelation, Geyer's initial
    monotone sequence (Vehtari et al. 2021, eq. 10–11). (s, m, n) -> (s,)"""
    s, m, n = draws.shape
    if n < 4:
        return np.full(s, np.nan)
    centred = draws - draws.mean(-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, size, axis=-1)
    acov = np.fft.irfft(f * np.conj(f), size, axis=-1)[..., :n] / n  # (s, m, n), biased
    chain_var = acov[..., 0] * n / (n - 1)
    within = chain_var.mean(-1)
    var_plus = within * (n - 1) / n + (draws.mean(-1).var(-1, ddof=1) if m > 1 else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1 - (within[:, None] - acov.mean(1)) / var_plus[:, None]  # (s, n)
    rho[:, 0] = 1.0
    out = np.empty(s)
    for j in range(s):
        if not np.isfinite(var_plus[j]) or var_plus[j] <= 0:
            out[j] = float(m * n)  # a constant statistic: every draw is exact
            continue
        r = rho[j]
        pairs = r[: (n // 2) * 2].reshape(-1, 2).sum(1)
        stop = np.flatnonzero(pairs < 0)
        pairs = pairs[: stop[0] if len(stop) else len(pairs)]
        pairs = np.minimum.accumulate(pairs)
        tau = max(-1 + 2 * pairs.sum(), 1 / np.log10(m * n)) if len(pairs) else 1.0
        out[j] = m * n / tau
    return out


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS: the ESS of the rank-normalised split chains. (s, chains, n) -> (s,)"""
    return _ess(_rank_normal(_split(draws))) if draws.shape[-1] >= 8 else np.full(len(draws), np.nan)


def ess_mean(draws: np.ndarray) -> np.ndarray:
    """The ESS that the mean's Monte Carlo standard error uses: of the split chains as
    they are. (s, chains, n) -> (s,)"""
    return _ess(_split(draws)) if draws.shape[-1] >= 8 else np.full(len(draws), np.nan)
