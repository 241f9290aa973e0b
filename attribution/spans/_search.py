"""The hot loop of span tracing, compiled with numba.

`longest_matches` computes, for every start `i` of the output, the longest prefix of
`output[i:]` that occurs in the indexed token array, and the suffix-array interval of all its
occurrences. Work is reused across starts: if `output[i:e]` occurs then so does
`output[i+1:e]`, so each start begins at the previous end instead of at zero (matching
statistics). For start `i + 1` the interval of the known prefix `output[i+1:e]` is found with
one binary search that skips the prefix already shared with both bounds (Manber-Myers
`min(lcp_lo, lcp_hi)`), then the match is extended token by token, narrowing the interval with
two binary searches per token (one comparison when a single occurrence is left).

Starts whose match is shorter than `min_length` can never give a kept span, so their exact
length is not needed: when the carried-over prefix is shorter than `min_length`, one binary
search for the `min_length`-gram at `i` decides whether the start is worth extending at all.
Most starts of novel text are settled by that single search.

Most of those searches are avoided altogether by a Bloom filter over the index's
`filter_m`-grams (built with the index): a start whose `filter_m`-gram is not in the filter
cannot begin a match of `min_length >= filter_m` tokens. False positives only cost the search.

Everything is plain integer arrays so that numba compiles it without Python objects; the
arrays may be read-only memory maps.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
FILTER_HASHES = 3


@njit(cache=True, nogil=True)
def _gram_hash(arr, start, m):
    """64-bit hash of arr[start:start+m] (FNV-1a over whole tokens, splitmix64 finish)."""
    h = _FNV_OFFSET
    for k in range(m):
        h = (h ^ np.uint64(arr[start + k])) * _FNV_PRIME
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@njit(cache=True, nogil=True)
def _filter_bit(h, mask, j):
    """Position of the j-th bit of hash h. Blocked Bloom filter: all bits of one gram lie in
    one 512-bit block (one cache line), chosen by the low bits; the offsets inside the block
    come from the high bits."""
    block = (h & mask) & ~np.uint64(511)
    return block + ((h >> np.uint64(37 + 9 * j)) & np.uint64(511))


@njit(cache=True, nogil=True)
def _filter_may_contain(bits, mask, arr, start, m):
    h = _gram_hash(arr, start, m)
    for j in range(FILTER_HASHES):
        pos = _filter_bit(h, mask, j)
        if (bits[pos >> np.uint64(3)] >> (pos & np.uint64(7))) & np.uint64(1) == 0:
            return False
    return True


@njit(cache=True, nogil=True)
def build_gram_filter(tokens, separator, m, bits, mask):
    """Set the filter bits of every m-gram of `tokens` that contains no separator."""
    run = 0
    for p in range(tokens.shape[0]):
        if tokens[p] == separator:
            run = 0
            continue
        run += 1
        if run < m:
            continue
        h = _gram_hash(tokens, p - m + 1, m)
        for j in range(FILTER_HASHES):
            pos = _filter_bit(h, mask, j)
            bits[pos >> np.uint64(3)] |= np.uint8(1) << np.uint8(pos & np.uint64(7))


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
    `query[start:start+length]` (empty when it does not occur); all of `[lo, hi)` share the
    pattern's first token."""
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
    if first == hi:
        return first, first
    sign, lcp = _compare(tokens, sa, first, query, start, length, min(lcp_a, lcp_b))
    if sign != 0:
        return first, first  # the pattern does not occur
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
def _occurs(tokens, sa, first_bounds, query, start, stop):
    """Whether query[start:stop] (all valid tokens) occurs in the index."""
    q0 = query[start]
    lo = first_bounds[q0]
    hi = first_bounds[q0 + 1]
    if lo == hi:
        return False
    if stop - start == 1:
        return True
    lo, hi = _locate(tokens, sa, lo, hi, query, start, stop - start)
    return lo < hi


@njit(cache=True, nogil=True)
def longest_matches(tokens, sa, first_bounds, query, min_length, bits, mask, filter_m):
    """For each start i: (end[i], lo[i], hi[i]) with output[i:end[i]] the longest match and
    sa[lo[i]:hi[i]] its occurrences, for every start that begins a maximal match of at least
    `min_length` tokens. Other starts report no interval and an end that is enough to tell
    that they are not such a start: end[i] == i for a match shorter than `min_length`, or the
    end of the match that contains theirs.

    `first_bounds[t]:first_bounds[t+1]` is the suffix-array interval of token t; query values
    outside `[0, len(first_bounds) - 1)` (unknown tokens, the separator) never match.
    `bits`/`mask`/`filter_m`: the index's m-gram filter (`filter_m == 0`: none).
    """
    n = query.shape[0]
    ends = np.empty(n, np.int64)
    los = np.zeros(n, np.int64)
    his = np.zeros(n, np.int64)
    n_tok = first_bounds.shape[0] - 1
    m = max(min_length, 1)
    has_filter = filter_m > 0
    use_filter = has_filter and filter_m <= m
    # next_bad[i]: first position >= i holding a token that cannot match
    next_bad = np.empty(n + 1, np.int64)
    next_bad[n] = n
    for k in range(n - 1, -1, -1):
        t = query[k]
        next_bad[k] = k if (t < 0 or t >= n_tok) else next_bad[k + 1]
    e = 0
    i = 0
    while i < n:
        ends[i] = i
        if next_bad[i] == i:
            i += 1
            continue
        q0 = query[i]
        lo = first_bounds[q0]
        hi = first_bounds[q0 + 1]
        if lo == hi:
            i += 1
            continue
        known = e - i
        if known >= m:
            if known > 1:
                lo, hi = _locate(tokens, sa, lo, hi, query, i, known)
        else:
            if next_bad[i] < i + m:
                i += 1
                continue
            if use_filter and not _filter_may_contain(bits, mask, query, i, filter_m):
                i += 1
                continue
            if m > 1:
                lo, hi = _locate(tokens, sa, lo, hi, query, i, m)
                if lo == hi:
                    i += 1
                    continue
            e = i + m
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
        # Every start j in (i, e) matches at least output[j:e]; its match reaches past e iff
        # output[j:e+1] occurs, which holds for all j from some j* on. Binary search for j*
        # instead of visiting every start; the starts before it end exactly at e, inside
        # this match, so they are not maximal.
        reaches_past = False
        if (
            e < n
            and next_bad[e] > e
            and has_filter
            and e - i >= filter_m
            and not (_filter_may_contain(bits, mask, query, e + 1 - filter_m, filter_m))
        ):
            # output[e+1-filter_m : e+1] occurs nowhere, so no start up to e+1-filter_m
            # reaches past e: one filter probe instead of the binary search (the usual case
            # when novel text breaks a match)
            j = e + 2 - filter_m
        elif e < n and next_bad[e] > e:
            a = i + 1
            b = e  # output[e:e+1] is a valid token; P(b) is checked by the search too
            while a < b:
                mid = (a + b) >> 1
                if _occurs(tokens, sa, first_bounds, query, mid, e + 1):
                    b = mid
                else:
                    a = mid + 1
            j = a
            reaches_past = j < e or _occurs(tokens, sa, first_bounds, query, e, e + 1)
            if not reaches_past:
                j = e + 1
        else:
            j = e
        for k in range(i + 1, min(j, n)):
            ends[k] = e
        if reaches_past:
            e = e + 1  # output[j:e+1] occurs
        i = j
    return ends, los, his


@njit(cache=True, nogil=True)
def distinct_records(sa, record_starts, los, his, candidates, max_records):
    """For each candidate start c: the distinct records (indices, ascending) holding the
    occurrences sa[los[c]:his[c]], in out[k, :count[k]]; count[k] == -1 when there are more
    than `max_records` of them (the scan stops there)."""
    k_max = candidates.shape[0]
    count = np.zeros(k_max, np.int64)
    out = np.zeros((k_max, max_records), np.int64)
    n_records = record_starts.shape[0]
    for k in range(k_max):
        c = candidates[k]
        found = 0
        for s in range(los[c], his[c]):
            p = sa[s]
            # record holding position p: last start <= p
            a = 0
            b = n_records
            while a < b:
                mid = (a + b) >> 1
                if record_starts[mid] <= p:
                    a = mid + 1
                else:
                    b = mid
            r = a - 1
            seen = False
            for x in range(found):
                if out[k, x] == r:
                    seen = True
                    break
            if seen:
                continue
            if found == max_records:
                found = -1
                break
            out[k, found] = r
            found += 1
        count[k] = found
        if found > 1:
            out[k, :found].sort()
    return count, out


@njit(cache=True, nogil=True)
def select_spans(
    query,
    ends,
    los,
    his,
    sa,
    first_bounds,
    record_starts,
    record_ids,
    contributor_ids,
    token_count,
    min_tokens,
    max_occurrences,
    max_records,
    cap,
):
    """Apply the rules of `attribution.spans.trace` to each start's longest match.

    Returns, for the chosen spans in start order: starts, ends, occurrences, record counts,
    and (count-padded) matrices of their record ids (ascending) and contributor ids.
    """
    n = query.shape[0]
    cand = np.empty(n, np.int64)
    nc = 0
    for i in range(n):
        e = ends[i]
        if i > 0 and e <= ends[i - 1]:
            continue  # contained in the previous start's match: not maximal
        if e - i >= min_tokens and his[i] - los[i] <= max_occurrences:
            cand[nc] = i
            nc += 1
    cand = cand[:nc]
    count, recs = distinct_records(sa, record_starts, los, his, cand, max_records)
    # unigram log-probability of each token, then of each candidate span
    n_tok = first_bounds.shape[0] - 1
    prefix = np.zeros(n + 1, np.float64)
    for k in range(n):
        t = query[k]
        c = 1
        if 0 <= t < n_tok:
            c = max(first_bounds[t + 1] - first_bounds[t], 1)
        prefix[k + 1] = prefix[k] + np.log(c / token_count)
    rare = np.flatnonzero(count > 0)
    scores = np.empty(rare.shape[0], np.float64)
    for x in range(rare.shape[0]):
        i = cand[rare[x]]
        scores[x] = prefix[ends[i]] - prefix[i]
    # least probable first; a stable sort keeps earlier starts first among equals
    chosen = np.sort(rare[np.argsort(scores, kind="mergesort")[:cap]])
    m = chosen.shape[0]
    out_start = np.empty(m, np.int64)
    out_end = np.empty(m, np.int64)
    out_occ = np.empty(m, np.int64)
    out_count = np.empty(m, np.int64)
    out_rid = np.zeros((m, max_records), np.int64)
    out_cid = np.zeros((m, max_records), np.int64)
    for x in range(m):
        k = chosen[x]
        i = cand[k]
        out_start[x] = i
        out_end[x] = ends[i]
        out_occ[x] = his[i] - los[i]
        cnt = count[k]
        out_count[x] = cnt
        rids = np.empty(cnt, np.int64)
        for y in range(cnt):
            rids[y] = record_ids[recs[k, y]]
        by_id = np.argsort(rids, kind="mergesort")
        for y in range(cnt):
            out_rid[x, y] = rids[by_id[y]]
            out_cid[x, y] = contributor_ids[recs[k, by_id[y]]]
    return out_start, out_end, out_occ, out_count, out_rid, out_cid
