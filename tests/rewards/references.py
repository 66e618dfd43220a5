"""Independent references for the reward tests: plain integer and float64
dynamic programs, written for clarity, not speed."""

import itertools

import numpy as np


def ref_table(a, b):
  """Float64-free integer DP table D[k, j] = ED(a[:k], b[:j])."""
  d = np.zeros((len(a) + 1, len(b) + 1), np.int64)
  d[:, 0] = np.arange(len(a) + 1)
  d[0, :] = np.arange(len(b) + 1)
  for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
    d[i, j] = min(d[i - 1, j - 1] + (a[i - 1] != b[j - 1]), d[i - 1, j] + 1,
                  d[i, j - 1] + 1)
  return d


def random_pairs(rng, batch, n, m, vocab):
  pred = rng.integers(0, vocab, (batch, n))
  target = rng.integers(0, vocab, (batch, m))
  # Make pairs similar so distances are not all near max(n, m).
  k = min(n, m)
  keep = rng.random((batch, k)) < 0.6
  target[:, :k] = np.where(keep, pred[:, :k], target[:, :k])
  return pred.astype(np.int32), target.astype(np.int32)


def ref_soft(c, gamma, ins=1.0, dele=1.0):
  """Float64 soft edit distance by the textbook double loop."""
  n, m = c.shape
  r = np.zeros((n + 1, m + 1))
  r[:, 0] = np.arange(n + 1) * ins
  r[0, :] = np.arange(m + 1) * dele
  for i, j in itertools.product(range(1, n + 1), range(1, m + 1)):
    a = np.array([r[i - 1, j - 1] + c[i - 1, j - 1], r[i - 1, j] + ins,
                  r[i, j - 1] + dele])
    lo = a.min()
    r[i, j] = lo - gamma * np.log(np.exp(-(a - lo) / gamma).sum())
  return r[n, m]


def ref_soft_grad(c, gamma, ins, dele, eps=1e-6):
  g = np.zeros_like(c)
  for idx in np.ndindex(*c.shape):
    cp, cm = c.copy(), c.copy()
    cp[idx] += eps
    cm[idx] -= eps
    g[idx] = (ref_soft(cp, gamma, ins, dele) -
              ref_soft(cm, gamma, ins, dele)) / (2 * eps)
  return g


def num_alignments(n, m):
  """Number of monotone alignment paths (Delannoy number D(n, m))."""
  p = np.ones((n + 1, m + 1))
  for i, j in itertools.product(range(1, n + 1), range(1, m + 1)):
    p[i, j] = p[i - 1, j - 1] + p[i - 1, j] + p[i, j - 1]
  return p[n, m]
