"""The hot loop of span tracing, compiled with numba.

`longest_matches` computes, for every start `i` of the output, the longest prefix of
`output[i:]` that occurs in the indexed token array, and the suffix-array interval of all its
occurrences. Work is reused across starts: if `output[i:e]` occurs then so does
`output[i+1:e]`, so each start begins at the previous end instead of at zero (matching
statistics). For start `i + 1` the interval of the known prefix `output[i+1:e]` is found with
one binary search that skips the prefix already shared with both bounds (Manber-Myers
`min(lcp_lo, lcp_hi)`), then the match is extended token by token, narrowing the interval with
two binary searches per token (one comparison when a single occurrence is left).

Everything is plain integer arrays so that numba compiles it without Python objects; the
arrays may be read-only memory maps.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _narrow(tokens, sa, lo, hi, depth, tok):
    """Sub-interval of `[lo, hi)` (suffixes sharing `depth` tokens) whose next token is `tok`."""
    a = lo
    b = hi
    while a < b:
        m = (a + b) >> 1
        if np.int64(tokens[sa[m] + depth]) < tok:
            a = m + 1
        else:
            b = m
    first = a
    b = hi
    while a < b:
        m = (a + b) >> 1
        if np.int64(tokens[sa[m] + depth]) <= tok:
            a = m + 1
        else:
            b = m
    return first, a


@njit(cache=True, nogil=True)
def _compare(tokens, sa, m, query, start, length, skip):
    """Compare suffix `sa[m]` with `query[start:start+length]`, from offset `skip` on.

    Returns (sign, lcp): sign < 0 if the suffix sorts before the pattern, 0 if the pattern is a
    prefix of the suffix, > 0 if after; lcp is the number of equal leading tokens.
    """
    p = sa[m]
    k = skip
    while k < length:
        t = np.int64(tokens[p + k])
        q = query[start + k]
        if t < q:
            return -1, k
        if t > q:
            return 1, k
        k += 1
    return 0, k


@njit(cache=True, nogil=True)
def _locate(tokens, sa, lo, hi, query, start, length):
    """Interval `[first, last)` of the suffixes in `[lo, hi)` that start with the pattern
    `query[start:start+length]` (known to occur, and to share its first token with all of
    `[lo, hi)`)."""
    # lower bound: first suffix >= pattern
    a = lo
    b = hi
    lcp_a = 1
    lcp_b = 1
    while a < b:
        m = (a + b) >> 1
        skip = min(lcp_a, lcp_b)
        sign, lcp = _compare(tokens, sa, m, query, start, length, skip)
        if sign < 0:
            a = m + 1
            lcp_a = lcp
        else:
            b = m
            lcp_b = lcp
    first = a
    # upper bound: first suffix that does not start with the pattern
    b = hi
    lcp_a = length
    lcp_b = 1
    while a < b:
        m = (a + b) >> 1
        skip = min(lcp_a, lcp_b)
        sign, lcp = _compare(tokens, sa, m, query, start, length, skip)
        if sign <= 0:
            a = m + 1
            lcp_a = lcp
        else:
            b = m
            lcp_b = lcp
    return first, a


@njit(cache=True, nogil=True)
def longest_matches(tokens, sa, first_bounds, query):
    """For each start i: (end[i], lo[i], hi[i]) with output[i:end[i]] the longest match and
    sa[lo[i]:hi[i]] its occurrences (end[i] == i and lo == hi when query[i] never occurs).

    `first_bounds[t]:first_bounds[t+1]` is the suffix-array interval of token t; query values
    outside `[0, len(first_bounds) - 1)` (unknown tokens, the separator) never match.
    """
    n = query.shape[0]
    ends = np.empty(n, np.int64)
    los = np.zeros(n, np.int64)
    his = np.zeros(n, np.int64)
    n_tok = first_bounds.shape[0] - 1
    e = 0
    for i in range(n):
        q0 = query[i]
        if q0 < 0 or q0 >= n_tok or first_bounds[q0] == first_bounds[q0 + 1]:
            ends[i] = i
            e = i + 1
            continue
        lo = first_bounds[q0]
        hi = first_bounds[q0 + 1]
        if e <= i + 1:
            e = i + 1
        elif e - i > 1:
            lo, hi = _locate(tokens, sa, lo, hi, query, i, e - i)
        while e < n:
            t = query[e]
            if t < 0 or t >= n_tok:
                break
            depth = e - i
            if hi - lo == 1:
                if np.int64(tokens[sa[lo] + depth]) != t:
                    break
            else:
                nlo, nhi = _narrow(tokens, sa, lo, hi, depth, t)
                if nlo == nhi:
                    break
                lo = nlo
                hi = nhi
            e += 1
        ends[i] = e
        los[i] = lo
        his[i] = hi
    return ends, los, his
