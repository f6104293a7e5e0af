"""ALBERT pretraining instances from tokenised documents, vectorised with numpy over a whole block.

Same semantics as google-research/albert's `create_pretraining_data.py`, one numpy pass per step instead of
Python objects per token:

- `dupe_factor` passes over the documents; each pass picks a target length per document (`max_seq_length - 3`,
  or with `short_seq_prob` a uniform length in [2, max_seq_length - 3]) and cuts the document greedily into
  chunks of whole sentences reaching the target.
- Sentence-order prediction: a chunk of k >= 2 sentences is split after a uniform 1..k-1 sentences into A
  and B; with p = 0.5 they are swapped (label 1 = swapped). A chunk of ONE sentence (a one-sentence
  document, or the last sentence left over) is split at a uniform word boundary inside it (any token
  boundary if it is one word; dropped if it is one token) and then swapped with p = 0.5 like any other chunk.
  google's script instead pairs it with a random other document and always labels it 1, which on short-
  document corpora unbalances the labels (69% label 1 on Debian fortunes).
- truncation of the longer segment, one token at a time from the front or the back (same final lengths as
  google's `truncate_seq_pair`, front cuts binomial(cut, 0.5)).
- whole-word n-gram masking: candidates are words (a piece starting with "▁", punctuation, a special piece,
  or a character of a script written without spaces: CJK, kana, Thai, Lao, Khmer, Myanmar), visited in
  random order; each picks n in 1..ngram with p ~ 1/n (favour_shorter_ngram), shrinks n while it would pass
  num_to_predict = min(max_predictions_per_seq, max(1, round(tokens * masked_lm_prob))), and is skipped if
  it overlaps an earlier one. Masked tokens: 80% [MASK], 10% unchanged, 10% a random non-special piece.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

PUNCT = set("!\"#$%&'()*+,-./:;?@[\\]^_`{|}~") | {"€", "£"}
# Scripts written without spaces between words: every piece of them starts a word for whole-word masking.
_NO_SPACE_RANGES = [
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x2E80, 0x2FDF),
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x31A0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F),
    (0x20000, 0x2FA1F),
]


def _no_space_script(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _NO_SPACE_RANGES)


def is_word_start(piece: str, special: bool = False) -> bool:
    """Whether a SentencePiece piece starts a word (google's `_is_start_piece_sp`, minus its bug of making
    every non-English piece a word start, which turns off whole-word masking for Cyrillic, accented Latin...)."""
    if special or piece.startswith("▁") or piece.startswith("<"):
        return True
    if not piece:
        return True
    first = piece[0]
    return piece in PUNCT or first in PUNCT or unicodedata.category(first).startswith("P") or _no_space_script(first)


@dataclass
class VocabInfo:
    """What instance creation needs from the vocabulary, as arrays indexed by piece id."""

    is_start: np.ndarray  # bool [V]
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    random_ids: np.ndarray  # ids drawn for the 10% random replacement: every non-special piece

    @classmethod
    def from_pieces(cls, pieces: list[str], specials: dict[str, int], control: set[int]) -> VocabInfo:
        is_start = np.array([is_word_start(p, i in control) for i, p in enumerate(pieces)], dtype=bool)
        random_ids = np.array([i for i in range(len(pieces)) if i not in control], dtype=np.int64)
        return cls(is_start, specials["[CLS]"], specials["[SEP]"], specials["[MASK]"], specials["<pad>"], random_ids)


@dataclass
class InstanceParams:
    max_seq_length: int = 64
    max_predictions_per_seq: int = 10
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 40
    ngram: int = 3
    favor_shorter_ngram: bool = True
    whole_word_mask: bool = True


@dataclass
class BlockStats:
    instances: int = 0
    tokens: int = 0  # real tokens incl. [CLS]/[SEP]
    masked: int = 0
    target_masked: int = 0  # sum of num_to_predict: what the masking aimed for
    sop_swapped: int = 0
    short_target: int = 0  # instances from a short_seq_prob target
    single_segment_split: int = 0
    dropped_one_token: int = 0
    replaced_mask: int = 0
    replaced_keep: int = 0
    replaced_random: int = 0
    ngram_hist: list[int] = field(default_factory=list)

    def add(self, other: BlockStats) -> None:
        for k, v in vars(other).items():
            if k == "ngram_hist":
                n = max(len(self.ngram_hist), len(v))
                self.ngram_hist = [
                    a + b
                    for a, b in zip(
                        self.ngram_hist + [0] * (n - len(self.ngram_hist)), v + [0] * (n - len(v)), strict=True
                    )
                ]
            else:
                setattr(self, k, getattr(self, k) + v)


def _chunks(seg_start: np.ndarray, doc_seg: np.ndarray, targets: np.ndarray, vdoc: np.ndarray):
    """Greedy chunking of every (pass, document) at once: a chunk ends at the first sentence that brings it
    to the target, or at the document's end. Returns (virtual doc, first sentence, end sentence) per chunk in
    (virtual doc, position) order."""
    lo, hi = doc_seg[vdoc], doc_seg[vdoc + 1]
    active = np.arange(len(vdoc))
    pos = lo.copy()
    out_v, out_s, out_e = [], [], []
    while active.size:
        s = pos[active]
        e = np.searchsorted(seg_start, seg_start[s] + targets[active], side="left")
        e = np.minimum(np.maximum(e, s + 1), hi[active])
        out_v.append(active)
        out_s.append(s)
        out_e.append(e)
        pos[active] = e
        active = active[e < hi[active]]
    v, s, e = np.concatenate(out_v), np.concatenate(out_s), np.concatenate(out_e)
    order = np.lexsort((s, v))
    return v[order], s[order], e[order]


def _truncate(la: np.ndarray, lb: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Final lengths of google's truncate_seq_pair (trim the longer one, the second one on a tie)."""
    excess = np.maximum(la + lb - max_tokens, 0)
    diff = np.abs(la - lb)
    one_sided = diff >= excess
    na = np.where(one_sided, np.where(la > lb, la - excess, la), (max_tokens + 1) // 2)
    nb = np.where(one_sided, np.where(la > lb, lb, lb - excess), max_tokens // 2)
    return na, nb


def make_instances(
    ids: np.ndarray,
    seg_start: np.ndarray,
    doc_seg: np.ndarray,
    vocab: VocabInfo,
    p: InstanceParams,
    rng: np.random.Generator,
    batch: int = 4096,
) -> Iterator[tuple[dict[str, np.ndarray], BlockStats]]:
    """Instances of one block of documents, in a random order, in batches of `batch` (numpy temporaries
    stay in cache; the batch size is part of the random stream, so keep it fixed for reproducible bytes).

    ids: token ids of all sentences, concatenated; seg_start[j]: offset of sentence j in ids (S + 1 entries);
    doc_seg[d]: first sentence of document d (D + 1 entries). Every sentence has >= 1 token.
    Yields google's features (shape [n, max_seq_length] or [n, max_predictions_per_seq]) and statistics.
    """
    stats = BlockStats(ngram_hist=[0] * p.ngram)
    max_tokens = p.max_seq_length - 3
    n_docs = len(doc_seg) - 1
    if n_docs <= 0 or ids.size == 0:  # a block whose lines all tokenised to nothing
        return
    vdoc = np.tile(np.arange(n_docs), p.dupe_factor)
    short = rng.random(vdoc.size) < p.short_seq_prob
    targets = np.where(short, rng.integers(2, max_tokens + 1, vdoc.size), max_tokens)
    v, s, e = _chunks(seg_start, doc_seg, targets, vdoc)
    n = v.size
    k = e - s
    u_split, u_swap = rng.random(n), rng.random(n)

    # A/B split: after 1..k-1 sentences; for one sentence, at a word start inside it.
    a_end_sent = s + 1 + np.floor(u_split * np.maximum(k - 1, 1)).astype(np.int64)
    split = seg_start[np.minimum(a_end_sent, e)]
    one = k == 1
    t0, t1 = seg_start[s], seg_start[e]
    starts = np.concatenate([[0], np.cumsum(vocab.is_start[ids])])  # word starts in ids[:i]
    n_starts = starts[t1] - starts[np.minimum(t0 + 1, t1)]
    by_word = one & (n_starts > 0)
    r = np.floor(u_split * np.maximum(n_starts, 1)).astype(np.int64)
    word_pos = np.searchsorted(starts, starts[np.minimum(t0 + 1, t1)] + r + 1, side="left") - 1
    by_token = one & ~by_word
    tok_pos = t0 + 1 + np.floor(u_split * np.maximum(t1 - t0 - 1, 1)).astype(np.int64)
    split = np.where(by_word, word_pos, np.where(by_token, tok_pos, split))
    keep = ~(one & (t1 - t0 < 2))
    stats.dropped_one_token = int((~keep).sum())
    stats.single_segment_split = int((one & keep).sum())
    swap = u_swap < 0.5
    v, t0, t1, split, swap = v[keep], t0[keep], t1[keep], split[keep], swap[keep]
    n = v.size
    a0, a1, b0, b1 = (
        np.where(swap, split, t0),
        np.where(swap, t1, split),
        np.where(swap, t0, split),
        np.where(swap, split, t1),
    )
    la, lb = a1 - a0, b1 - b0
    na, nb = _truncate(la, lb, max_tokens)
    a0 = a0 + rng.binomial(la - na, 0.5)
    b0 = b0 + rng.binomial(lb - nb, 0.5)
    stats.sop_swapped = int(swap.sum())
    stats.short_target = int(short[v].sum())
    # google shuffles its instances: so do we, within the block, before building them in batches.
    perm = rng.permutation(n)
    ext_ids = np.concatenate([ids, [vocab.cls_id, vocab.sep_id, vocab.pad_id]])
    ext_start = np.concatenate([vocab.is_start[ids], [True, True, False]])
    first = True
    for lo in range(0, n, batch):
        idx = perm[lo : lo + batch]
        features, bstats = _build(ext_ids, ext_start, a0[idx], na[idx], b0[idx], nb[idx], swap[idx], vocab, p, rng)
        if first:
            bstats.add(stats)
            first = False
        yield features, bstats


def _build(
    ext_ids, ext_start, a0, na, b0, nb, swap, vocab: VocabInfo, p: InstanceParams, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], BlockStats]:
    """Assemble and mask a batch of instances whose segments are ids[a0:a0+na] and ids[b0:b0+nb], where ext_ids
    is ids followed by [CLS], [SEP], <pad> and ext_start[i] whether ext_ids[i] starts a word (True for [CLS] and
    [SEP], False for <pad>: google's token_boundary)."""
    stats = BlockStats(ngram_hist=[0] * p.ngram)
    L, P = p.max_seq_length, p.max_predictions_per_seq
    n = a0.size

    # Assemble [CLS] A [SEP] B [SEP] <pad>... as one gather from ext = ids + [CLS, SEP, <pad>] (at E, E+1, E+2).
    E = ext_ids.size - 3
    j = np.arange(L)[None, :]
    na_, n_tok = na[:, None], na + nb + 3
    src = np.where(j <= na_, a0[:, None] - 1, b0[:, None] - na_ - 2) + j
    src[:, 0] = E
    rows_ = np.arange(n)
    src[rows_, na + 1] = E + 1
    src[rows_, n_tok - 1] = E + 1
    input_mask = j < n_tok[:, None]
    src[~input_mask] = E + 2
    input_ids = ext_ids[src]
    tb = ext_start[src]
    real = src < E
    token_boundary = tb.view(np.uint8)
    segment_ids = ((j >= na_ + 2) & input_mask).view(np.uint8)
    input_mask = input_mask.view(np.uint8)

    # Whole words: a real token starts a word if its piece does, or it follows [CLS]/[SEP].
    after_special = np.zeros_like(real)
    after_special[:, 1:] = ~real[:, :-1]
    word_start = real & (tb | after_special | (not p.whole_word_mask))
    # int32: numpy's cumsum of bool into int64 is ~20x slower (a slow cast loop)
    wid = np.cumsum(word_start, axis=1, dtype=np.int32) - 1  # word index of each real token
    nw = wid[:, -1].astype(np.int64) + 1
    maxw = int(nw.max()) if n else 0
    width = maxw + p.ngram + 1
    word_at = np.arange(n)[:, None] * width + wid  # flat [n, width] index of each token's word
    # wcum[r, w]: real tokens before word w of row r. Counted one column to the right (the last column holds
    # no word, so nothing crosses into the next row) and summed in place: no second n x width array.
    wcum = np.bincount(word_at[real] + 1, minlength=n * width + 1)[: n * width].reshape(n, width)
    np.cumsum(wcum, axis=1, out=wcum)
    to_predict = np.minimum(P, np.maximum(1, np.rint(n_tok * p.masked_lm_prob).astype(np.int64)))

    # Visit words in random order; n-gram length drawn with p ~ 1/n over the lengths that fit the document.
    # The order is a Fisher-Yates shuffle of each row's own words done lazily, one draw per visit: a row stops
    # as soon as its budget is spent (usually after a few visits), so most of the permutation is never drawn.
    pv = 1.0 / np.arange(1, p.ngram + 1)
    if not p.favor_shorter_ngram:
        pv = pv[::-1]
    cdf = np.zeros((p.ngram + 1, p.ngram))  # cdf[avail] over lengths 1..avail
    for a in range(1, p.ngram + 1):
        cdf[a, :a] = np.cumsum(pv[:a]) / pv[:a].sum()
        cdf[a, a:] = 1.0
    cdf_t = np.ascontiguousarray(cdf.T)  # cdf_t[k][avail]: P(length <= k + 1)
    covered = np.zeros(n * width, dtype=bool)  # flat [n, width]: word w of row r at r * width + w
    wcum_flat = wcum.reshape(-1)
    order_flat = np.empty((n, max(maxw, 1)), dtype=np.int32)
    order_flat[:] = np.arange(max(maxw, 1), dtype=np.int32)
    order_flat = order_flat.reshape(-1)
    hist = np.zeros(p.ngram + 1, dtype=np.int64)
    # State of the rows still masking, kept compact (dropping finished rows beats gathering by index).
    rows = np.flatnonzero(nw > 0)
    room = to_predict[rows]  # predictions left in the budget
    nwr = nw[rows]  # words in the row
    for rank in range(maxw):
        live = (room > 0) & (nwr > rank)
        if not live.all():
            rows, room, nwr = rows[live], room[live], nwr[live]
            if not rows.size:
                break
        u = rng.random((2, rows.size))
        # Fisher-Yates step: the word at a uniform slot of rank..nw-1 is visited; slot `rank`'s word moves there.
        at_rank = rows * maxw + rank
        at_pick = at_rank + (u[0] * (nwr - rank)).astype(np.int64)
        w = order_flat[at_pick]
        order_flat[at_pick] = order_flat[at_rank]
        avail = np.minimum(nwr - w, p.ngram)
        # Column by column over the n-gram's words: reductions along a length-3 axis cost 4-8x more.
        nn = np.ones(rows.size, dtype=np.int64)
        for k in range(p.ngram - 1):
            nn += u[1] > cdf_t[k][avail]
        np.minimum(nn, avail, out=nn)
        at = rows * width + w
        base = wcum_flat[at]
        # The longest g <= nn whose tokens still fit the budget (token counts grow with g: a prefix of Trues).
        chosen = np.zeros(rows.size, dtype=np.int64)
        hit = np.zeros(rows.size, dtype=bool)
        taken = np.zeros(rows.size, dtype=np.int64)  # tokens of the chosen n-gram
        for g in range(p.ngram):
            span = wcum_flat[at + (g + 1)] - base
            fits = (span <= room) & (g < nn)
            chosen += fits
            hit |= fits & covered[at + g]
            np.copyto(taken, span, where=fits)
        ok = (chosen > 0) & ~hit
        for g in range(p.ngram):
            covered[at[ok & (chosen > g)] + g] = True
        g_ok = chosen[ok]
        room[ok] -= taken[ok]
        hist += np.bincount(g_ok, minlength=p.ngram + 1)

    # wid is -1 before the first word: the previous row's last column, never covered (width > maxw)
    masked = covered[word_at] & real
    # flat indices throughout: 2-D fancy indexing costs ~2x more
    flat = np.flatnonzero(masked)  # row-major: positions sorted within each instance
    mr = flat // L
    mc = flat - mr * L
    ids_flat = input_ids.reshape(-1)
    labels = ids_flat[flat]
    u1, u2 = rng.random(mr.size), rng.random(mr.size)
    rand_ids = vocab.random_ids[rng.integers(0, vocab.random_ids.size, mr.size)]
    to_mask, to_keep = u1 < 0.8, (u1 >= 0.8) & (u2 < 0.5)
    ids_flat[flat] = np.where(to_mask, vocab.mask_id, np.where(to_keep, labels, rand_ids))
    per_row = np.bincount(mr, minlength=n)
    at = mr * P + np.arange(mr.size) - (np.cumsum(per_row) - per_row)[mr]  # slot k of row r at r * P + k
    positions = np.zeros((n, P), dtype=np.int64)
    lm_ids = np.zeros((n, P), dtype=np.int64)
    weights = np.zeros((n, P), dtype=np.float32)
    positions.reshape(-1)[at], lm_ids.reshape(-1)[at], weights.reshape(-1)[at] = mc, labels, 1.0

    features = {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "token_boundary": token_boundary,
        "masked_lm_positions": positions,
        "masked_lm_ids": lm_ids,
        "masked_lm_weights": weights,
        "next_sentence_labels": swap.astype(np.uint8)[:, None],
    }
    stats.instances, stats.tokens, stats.masked = n, int(n_tok.sum()), int(mr.size)
    stats.target_masked = int(to_predict.sum())
    stats.replaced_mask, stats.replaced_keep = int(to_mask.sum()), int(to_keep.sum())
    stats.replaced_random = int(mr.size - to_mask.sum() - to_keep.sum())
    stats.ngram_hist = hist[1:].tolist()
    return features, stats
