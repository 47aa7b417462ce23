"""The fitted rule of a concept: a linear scorer over the stored vectors, from a few examples.

A concept ("rex", "our boat") is learned from photos that show it (positives), photos that do not
(negatives, `--not` and "not this" marks), and a background of random photos of the collection
(most of which do not show it). Its scorer is a linear function f(x) = w . x + b of a photo's
vector x, fitted in closed form as a regularised least-squares classifier (targets +1 / -1):

    minimise   sum_pos (f(x) - 1)^2 + n_w sum_neg (f(x) + 1)^2 + b_w |pos| E_bg[(f(x) + 1)^2]
               + lam |w - w0|^2

The background enters through its mean and second moment only (one (d+1)^2 matrix, computed
once per catalog generation), so a refit is one small linear solve whatever the collection's size.
Then the positives' mean direction is added to w in units of f's spread over the background (a
nearest-mean classifier beside the discriminative one, as Tip-Adapter adds its cache model to
CLIP's classifier), centred so that the threshold keeps its meaning. retriever/concepts.py fits
twice: the second time with the collection's best-scoring photos as more positives.

The concept's name can be a prior (w0 and WiSE-FT's mixing of the zero-shot scorer, weighted by
the name's AUC on the examples: 0 at chance), as a constrained linear probe uses the zero-shot
classifier (Silva-Rodriguez et al. 2024, CLAP). Measured on the train split (benchmarks/adapt.py
--fit, "name_prior"): with one example a describing name helps (AP 0.725 -> 0.763) and a wrong one
hurts (-> 0.659); at five examples the name costs 0.014. A user's names ("Rex") describe nothing
to the encoder, so concepts are fitted without it: a name is only a name.

The ranking of a concept is by w (its unit vector is the concept's query vector, combinable with
text and image terms), and a query of concepts alone re-scores its best photos by their
neighbours' scores (smooth_by_neighbours); its yes/no is f(x) >= threshold. Every constant in
PARAMS and NEIGHBOURS was chosen on caltech101-train + distractors-tune (benchmarks/adapt.py
--fit). numpy only: milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Chosen on caltech101-train + distractors-tune by benchmarks/adapt.py --fit: the best mean AP at 5
# examples over lam x background_weight x prototype; the threshold, the lowest with precision >= 0.85
# at 15 examples.
PARAMS = {
    "lam": 0.01,  # pull of w toward the prior (or toward "no" everywhere without one)
    "background_weight": 4.0,  # the background's weight, per positive example
    "negative_weight": 1.0,  # each explicit negative, relative to a positive
    "prior_scale": 0.5,  # with a prior: it reaches +1 at 1 / prior_scale z-scores above the background
    "mix": 0.0,  # with a prior: WiSE-FT mixing of the zero-shot scorer back in, in z-score units
    "prototype": 0.5,  # the positives' mean direction added, in z-score units (a nearest-mean classifier)
    "threshold": 0.15,  # yes when f(x) >= threshold
}
BACKGROUND_SIZE = 2000  # random collection photos that stand for "not the concept"
# A concept query's ranking, re-scored among its best photos (smooth_by_neighbours): chosen on
# caltech101-train + distractors-tune by benchmarks/adapt.py --fit (the best mean AP at 5 examples).
NEIGHBOURS = {
    "pool": 200,  # the best photos re-scored (the rest keep their order, below them)
    "k": 5,  # each one's nearest neighbours among them
    "weight": 1.0,  # their mean score's weight against the photo's own
}


@dataclass(frozen=True)
class Background:
    """What the fit needs of the background photos: their count, mean and second moment of the
    vectors with a constant 1 appended ((d+1,), (d+1, d+1))."""

    count: int
    mean: np.ndarray
    moment: np.ndarray

    @classmethod
    def of(cls, vectors: np.ndarray) -> "Background":
        x = _augment(np.asarray(vectors, dtype=np.float64))
        if len(x) == 0:
            raise ValueError("an empty background")
        with one_blas_thread():
            moment = (x.T @ x) / len(x)
        return cls(len(x), x.mean(axis=0), moment)


@dataclass(frozen=True)
class Fitted:
    weights: np.ndarray  # (d,) w
    bias: float  # b
    threshold: float  # yes when w . x + b >= threshold
    prior_weight: float  # 0..1: how much the name's text vector counted (its AUC, rescaled)

    @property
    def direction(self) -> np.ndarray:
        """The unit vector that ranks like the concept: its query vector."""
        norm = float(np.linalg.norm(self.weights))
        return (self.weights / norm if norm > 0 else self.weights).astype(np.float32)

    @property
    def cosine_threshold(self) -> float:
        """yes <=> direction . x >= this (the threshold of f, in the cosine of `direction`)."""
        norm = float(np.linalg.norm(self.weights))
        return float((self.threshold - self.bias) / norm) if norm > 0 else float("inf")

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float64) @ self.weights + self.bias

    def accepts(self, vectors: np.ndarray) -> np.ndarray:
        return self.scores(vectors) >= self.threshold


def auc(positive_scores: np.ndarray, background_scores: np.ndarray) -> float:
    """P(a positive scores above a background photo), ties counting half."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    bg = np.sort(np.asarray(background_scores, dtype=np.float64))
    if len(pos) == 0 or len(bg) == 0:
        return 0.5
    below = np.searchsorted(bg, pos, side="left")
    not_above = np.searchsorted(bg, pos, side="right")
    return float(((below + not_above) / 2).mean() / len(bg))


def prior_gate(area: float) -> float:
    """An AUC -> the prior's weight: 0 at chance (0.5) or below, 1 at 1.0."""
    return float(np.clip((area - 0.5) / 0.5, 0.0, 1.0))


def fit(positives: np.ndarray, negatives: np.ndarray | None, background: Background,
        background_sample: np.ndarray | None = None, prior: np.ndarray | None = None,
        params: dict | None = None) -> Fitted:
    """The concept's scorer from its examples' vectors ((p, d), (n, d)), the background (its
    moments; `background_sample`: some of its vectors, to measure the prior's AUC) and the prior
    (the name's unit text vector, or None). At least one positive."""
    p = {**PARAMS, **(params or {})}
    pos = _augment(np.atleast_2d(np.asarray(positives, dtype=np.float64)))
    if len(pos) == 0 or pos.shape[1] < 2:
        raise ValueError("a concept needs at least one positive example")
    dim = pos.shape[1]
    neg = np.zeros((0, dim)) if negatives is None or len(negatives) == 0 else \
        _augment(np.atleast_2d(np.asarray(negatives, dtype=np.float64)))
    lam, bw, nw = float(p["lam"]), float(p["background_weight"]), float(p["negative_weight"])
    regular = np.ones(dim)
    regular[-1] = 1e-3  # the bias is (almost) free
    w0 = np.zeros(dim)
    w0[-1] = -1.0  # no prior: "no" everywhere
    gate = 0.0
    if prior is not None and background_sample is not None and len(background_sample):
        text = np.asarray(prior, dtype=np.float64)
        bg_scores = np.asarray(background_sample, dtype=np.float64) @ text
        gate = prior_gate(auc(pos[:, :-1] @ text, bg_scores))
        if gate > 0:
            mu, sigma = float(bg_scores.mean()), float(bg_scores.std()) or 1.0
            scale = gate * float(p["prior_scale"]) / sigma  # +1 at (1 / prior_scale) z-scores, times the gate
            w0[:-1] = scale * text
            w0[-1] = -1.0 - scale * mu
    a = pos.T @ pos + nw * (neg.T @ neg) + bw * len(pos) * background.moment + lam * np.diag(regular)
    b = pos.sum(axis=0) - nw * neg.sum(axis=0) - bw * len(pos) * background.mean + lam * regular * w0
    with one_blas_thread():
        w = np.linalg.solve(a, b)
    weights, bias = w[:-1], float(w[-1])
    # Other scorers added in the units of this one's spread over the background, centred on the
    # background's mean (so the threshold keeps its meaning): the positives' mean (a nearest-mean
    # classifier, as Tip-Adapter adds its cache model), and with a prior some of the zero-shot
    # scorer (WiSE-FT's interpolation).
    cov = background.moment[:-1, :-1] - np.outer(background.mean[:-1], background.mean[:-1])
    sigma_f = float(np.sqrt(max(weights @ cov @ weights, 1e-18)))
    extra = [(float(p.get("prototype", 0.0)), pos[:, :-1].mean(axis=0))]
    if prior is not None:
        extra.append((float(p.get("mix", 0.0)) * gate, np.asarray(prior, dtype=np.float64)))
    for share, direction in extra:
        if share > 0:
            step = share * sigma_f / float(np.sqrt(max(direction @ cov @ direction, 1e-18)))
            weights = weights + step * direction
            bias -= step * float(direction @ background.mean[:-1])
    return Fitted(weights=weights, bias=bias, threshold=float(p["threshold"]), prior_weight=gate)


def smooth_by_neighbours(scores: np.ndarray, vectors: np.ndarray, k: int | None = None,
                         weight: float | None = None) -> np.ndarray:
    """A concept ranking's best photos re-scored by their neighbours: each photo's score averaged
    with the mean score of its `k` nearest neighbours among them (cosine of their vectors), the
    neighbours weighing `weight` against the photo itself. A photo of the concept that the linear
    rule ranks a little low is lifted by the photos like it that it ranks high; a stray one among
    the best sinks when its neighbours score low (the nearest-neighbour smoothing of similarity
    search's re-ranking, as in query expansion, on the concept's own best photos). The new scores
    are means of the old ones, so they stay within the pool's range and above every photo outside
    it. (n,) scores and (n, d) unit vectors -> (n,) scores."""
    s = np.asarray(scores, dtype=np.float64)
    k = int(NEIGHBOURS["k"] if k is None else k)
    weight = float(NEIGHBOURS["weight"] if weight is None else weight)
    k = min(k, len(s) - 1)
    if k <= 0 or weight <= 0:
        return s
    v = np.asarray(vectors, dtype=np.float32)
    similar = v @ v.T
    np.fill_diagonal(similar, -np.inf)
    nearest = np.argpartition(-similar, k - 1, axis=1)[:, :k]
    return (s + weight * s[nearest].mean(axis=1)) / (1.0 + weight)


def one_blas_thread():
    """BLAS on one thread for a small solve: OpenBLAS's threads on 2 busy cores spin, and a
    705 x 705 solve takes 200 ms instead of 10 (measured)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _augment(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])
