"""Compiled (numba) assembly and n-gram masking of instances: google's features from segment spans.

One row at a time in machine code: the masking is a short data-dependent loop per instance (visit words in
random order until the budget is spent), which vectorised numpy could only run as a loop over ranks with
whole-batch temporaries. The semantics are those described in `instances.py`. `build_batch` returns feature
matrices; `build_records` writes the same instances straight into a reused buffer as framed TFRecords
(tfrecord_encode.write_example), which is what the stage runs: no per-batch arrays, no fresh memory.

Random numbers: instance i of a block draws from its own SplitMix64 stream keyed by (block seed, i), so its
masking depends on nothing else, not even the batch size; the block seed is the last draw of the block's
numpy generator. Same inputs, same bytes, on any machine (integer arithmetic, IEEE comparisons, doubles made
exactly from 53 random bits).
"""

from __future__ import annotations

import numba
import numpy as np

from albert_exp.tfrecord_encode import write_example

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Statistics returned by the kernel, in this order (BlockStats fields).
STATS = ("tokens", "masked", "target_masked", "replaced_mask", "replaced_keep", "replaced_random")


@numba.njit(cache=True, inline="always")
def _mix(z):
    """SplitMix64's finalizer: a bijection of uint64 that scrambles every bit into every other."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _next(state):
    """SplitMix64: (new state, 64 random bits)."""
    state = state + _GOLDEN
    return state, _mix(state)


@numba.njit(cache=True, inline="always")
def _uniform(state):
    """(new state, a double uniform in [0, 1))."""
    state, z = _next(state)
    return state, np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def _layout(ids, is_start, a0, la, b0, lb, specials, row, input_mask, segment_ids, token_boundary):
    """[CLS] A [SEP] B [SEP] <pad>... into the row vectors; token_boundary is 1 for [CLS]/[SEP] and for pieces
    that start a word. Returns the number of real tokens."""
    seq_len = row.size
    cls_id, sep_id, pad_id = specials[0], specials[1], specials[3]
    n_tok = la + lb + 3
    row[0] = cls_id
    token_boundary[0] = 1
    for j in range(la):
        t = ids[a0 + j]
        row[1 + j] = t
        token_boundary[1 + j] = is_start[t]
    row[la + 1] = sep_id
    token_boundary[la + 1] = 1
    for j in range(lb):
        t = ids[b0 + j]
        row[la + 2 + j] = t
        token_boundary[la + 2 + j] = is_start[t]
    row[n_tok - 1] = sep_id
    token_boundary[n_tok - 1] = 1
    for j in range(seq_len):
        input_mask[j] = j < n_tok
        segment_ids[j] = la + 2 <= j < n_tok
        if j >= n_tok:
            row[j] = pad_id
            token_boundary[j] = 0
    return n_tok


@numba.njit(cache=True, inline="always")
def _words(la, n_tok, token_boundary, whole_word_mask, word_tok, word_of):
    """Words over the real tokens: a piece that starts a word, or the first token after [CLS]/[SEP] (every
    token without whole_word_mask). word_tok[w]: the real-token index where word w starts (word_tok[nw]: the
    end); word_of[j]: the word of position j. Returns the number of words."""
    nw = 0
    real = 0
    for j in range(1, n_tok - 1):
        if j == la + 1:
            continue
        if j == 1 or j == la + 2 or token_boundary[j] or not whole_word_mask:
            word_tok[nw] = real
            nw += 1
        word_of[j] = nw - 1
        real += 1
    word_tok[nw] = real
    return nw


@numba.njit(cache=True, inline="always")
def _choose_ngrams(nw, budget, ngram_cdf, word_tok, order, covered, hist, state):
    """Visit words in random order (a lazy Fisher-Yates shuffle: one draw per visit), each the start of an
    n-gram of p ~ 1/n words, shortened to the budget; skipped if it overlaps a covered word. Marks the chosen
    words in `covered`; returns the new random state."""
    ngram = ngram_cdf.shape[1]
    for w in range(nw):
        order[w] = w
        covered[w] = False
    room = budget
    for rank in range(nw):
        if room <= 0:
            break
        state, u = _uniform(state)
        k = rank + int(u * (nw - rank))
        w = order[k]
        order[k] = order[rank]
        avail = min(nw - w, ngram)
        state, u = _uniform(state)
        want = 1
        for g in range(ngram - 1):
            if u > ngram_cdf[avail, g]:
                want += 1
        want = min(want, avail)
        chosen = 0
        hit = False
        for g in range(1, want + 1):
            if word_tok[w + g] - word_tok[w] > room:
                break
            chosen = g
            hit = hit or covered[w + g - 1]
        if chosen == 0 or hit:
            continue
        for g in range(chosen):
            covered[w + g] = True
        room -= word_tok[w + chosen] - word_tok[w]
        hist[chosen] += 1
    return state


@numba.njit(cache=True, inline="always")
def _apply_masks(la, n_tok, mask_id, random_ids, covered, word_of, row, positions, lm_ids, stats, state):
    """The covered words' tokens in position order: 80% [MASK], 10% unchanged, 10% a random non-special piece.
    Returns the number of masked tokens (positions/lm_ids[:m]; the rest zeroed)."""
    m = 0
    for j in range(1, n_tok - 1):
        if j == la + 1 or not covered[word_of[j]]:
            continue
        label = row[j]
        positions[m] = j
        lm_ids[m] = label
        state, u = _uniform(state)
        if u < 0.8:
            row[j] = mask_id
            stats[3] += 1
        else:
            state, u = _uniform(state)
            if u < 0.5:
                stats[4] += 1
            else:
                state, bits = _next(state)
                row[j] = random_ids[bits % np.uint64(random_ids.size)]
                stats[5] += 1
        m += 1
    for k in range(m, positions.size):
        positions[k] = 0
        lm_ids[k] = 0
    return m


@numba.njit(cache=True, inline="always")
def _row(
    ids,
    is_start,
    a0,
    la,
    b0,
    lb,
    specials,
    random_ids,
    masked_lm_prob,
    ngram_cdf,
    whole_word_mask,
    state,
    row,
    input_mask,
    segment_ids,
    token_boundary,
    positions,
    lm_ids,
    stats,
    hist,
    word_tok,
    word_of,
    order,
    covered,
):
    """One instance into the row vectors (row = input_ids): [CLS] A [SEP] B [SEP] <pad>... with whole-word
    n-gram masking. Returns the number of masked tokens (positions/lm_ids[:m]); the rest of every vector is
    overwritten, so scratch rows can be reused. word_tok, word_of, order, covered: scratch."""
    n_tok = _layout(ids, is_start, a0, la, b0, lb, specials, row, input_mask, segment_ids, token_boundary)
    nw = _words(la, n_tok, token_boundary, whole_word_mask, word_tok, word_of)
    budget = min(positions.size, max(1, int(np.rint(n_tok * masked_lm_prob))))
    stats[0] += n_tok
    stats[2] += budget
    state = _choose_ngrams(nw, budget, ngram_cdf, word_tok, order, covered, hist, state)
    m = _apply_masks(la, n_tok, specials[2], random_ids, covered, word_of, row, positions, lm_ids, stats, state)
    stats[1] += m
    return m


@numba.njit(cache=True, inline="always")
def _row_state(seed, r):
    """The start of instance r's stream: a scrambled point of the Weyl sequence, not seed + r * step, whose
    streams would overlap (row r's third draw would be row r + 1's first)."""
    return _mix(seed + np.uint64(r) * _GOLDEN)


ONE_F32 = 0x3F800000  # 1.0f: masked_lm_weights travel as float32 bit patterns, like every column an int64


@numba.njit(cache=True)
def build(
    ids,
    is_start,
    a0,
    na,
    b0,
    nb,
    swap,
    first,
    specials,
    random_ids,
    masked_lm_prob,
    ngram_cdf,
    whole_word_mask,
    seed,
    cols,
    encode,
    is_float,
    keys,
    key_off,
    crc_tables,
    out,
):
    """Instances whose segments are ids[a0:a0+na] and ids[b0:b0+nb] (swap: the SOP label), as google's eight
    features in `cols` (int64 matrices in FEATURES order; masked_lm_weights as float32 bits). Row r draws from
    the stream of instance `first + r`; specials = [CLS], [SEP], [MASK], <pad> ids; ngram_cdf[avail, k] is
    P(n-gram length <= k + 1) when `avail` words are left.

    encode=False: row r goes to row r of `cols` ([N, L] each). encode=True: `cols` are one-row scratch and
    each instance is written to `out` as a framed TFRecord (which must hold N * max_example_bytes).
    Returns (bytes written to out, stats as in STATS, n-gram length histogram [ngram + 1])."""
    ngram = ngram_cdf.shape[1]
    seq_len = cols[0].shape[1]
    stats = np.zeros(len(STATS), dtype=np.int64)
    hist = np.zeros(ngram + 1, dtype=np.int64)
    word_tok, word_of = np.empty(seq_len + 1, dtype=np.int64), np.empty(seq_len, dtype=np.int64)
    order, covered = np.empty(seq_len, dtype=np.int64), np.empty(seq_len + ngram, dtype=np.bool_)
    packed = np.zeros(len(is_float), dtype=np.int64)
    pos = 0
    for r in range(a0.size):
        i = 0 if encode else r
        m = _row(
            ids,
            is_start,
            a0[r],
            na[r],
            b0[r],
            nb[r],
            specials,
            random_ids,
            masked_lm_prob,
            ngram_cdf,
            whole_word_mask,
            _row_state(seed, first + r),
            cols[0][i],
            cols[1][i],
            cols[2][i],
            cols[3][i],
            cols[4][i],
            cols[5][i],
            stats,
            hist,
            word_tok,
            word_of,
            order,
            covered,
        )
        for k in range(cols[6].shape[1]):
            cols[6][i, k] = ONE_F32 if k < m else 0
        cols[7][i, 0] = 1 if swap[r] else 0
        if encode:
            pos = write_example(out, pos, cols, 0, is_float, keys, key_off, True, crc_tables, packed)
    return pos, stats, hist
