"""ALBERT pretraining instances from tokenised documents: planned with numpy over a whole block (chunks, SOP
splits, truncation, shuffle), then assembled, masked and serialized one instance at a time in compiled code
(masking.py): `make_instances` gives feature arrays, `make_records` the TFRecord bytes the stage writes.

Same semantics as google-research/albert's `create_pretraining_data.py`, without Python objects per token:

- `dupe_factor` passes over the documents; each pass picks a target length per document (`max_seq_length - 3`,
  or with `short_seq_prob` a uniform length in [2, max_seq_length - 3]) and cuts the document greedily into
  chunks of whole sentences reaching the target.
- Sentence-order prediction (`pairing`): a chunk of k >= 2 sentences is split after a uniform 1..k-1
  sentences into A and B; with p = 0.5 they are swapped (label 1 = swapped). What differs is the chunk of ONE
  sentence, which has no sentence boundary to split at:
  * "pack" (default): such chunks are made rare. A short document (one sentence, or fewer than
    `pack_below_tokens` tokens) is packed with its neighbours (the boundaries on both sides of it are
    removed, as RoBERTa's FULL-SENTENCES packs across documents; A and B may then come from neighbouring
    documents, whose order is the corpus order), and a
    document's last sentence left alone by the greedy cut joins the chunk before it when the two fit in
    max_seq_length - 3 tokens. A one-sentence chunk that remains (a sentence that reaches the target by
    itself, a last sentence that does not fit) is split at a uniform word boundary leaving at least
    `min_split_words` words on each side (1 if it is shorter; any token boundary if it is one word; dropped
    if it is one token), then swapped with p = 0.5. Labels stay balanced and instances stay full: on 20k
    fortune lines, more real tokens per instance than google's (benchmarks/pretraining_data.py).
  * "split": every one-sentence chunk is split at a uniform word boundary (format 3 of this stage). Balanced,
    but instances are 17% shorter than google's and 13% have a segment of <= 2 tokens.
  * "google": google's script: B is taken from a random other document of the block (from a random
    sentence, whole sentences until it reaches the target), label always 1. Full instances, unbalanced
    labels on short-document corpora (63.5% label 1 on Debian fortunes), and B is not a continuation.
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
from typing import Any

import numpy as np

from albert_exp.config import PretrainingDataConfig
from albert_exp.labels import no_space_script
from albert_exp.tfrecord import FEATURES

PUNCT = set("!\"#$%&'()*+,-./:;?@[\\]^_`{|}~") | {"€", "£"}


def is_word_start(piece: str, special: bool = False) -> bool:
    """Whether a SentencePiece piece starts a word (google's `_is_start_piece_sp`, minus its bug of making
    every non-English piece a word start, which turns off whole-word masking for Cyrillic, accented Latin...)."""
    if special or piece.startswith("▁") or piece.startswith("<"):
        return True
    if not piece:
        return True
    first = piece[0]
    return piece in PUNCT or first in PUNCT or unicodedata.category(first).startswith("P") or no_space_script(first)


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


PAIRINGS = ("pack", "split", "google")


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
    packed_documents: int = 0  # pack: one-sentence documents packed with a neighbour
    joined_last: int = 0  # pack: last sentences that joined the chunk before them
    random_next: int = 0  # google: instances whose B comes from a random document (label 1)
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


def _chunks(seg_start: np.ndarray, doc_seg: np.ndarray, targets: np.ndarray, vdoc: np.ndarray, join_limit: int = 0):
    """Greedy chunking of every (pass, document) at once: a chunk ends at the first sentence that brings it
    to the target, or at the document's end. join_limit > 0: a chunk that would leave exactly one sentence
    of its document behind takes it too when the whole fits in join_limit tokens. Returns (virtual doc,
    first sentence, end sentence, joined) per chunk in (virtual doc, position) order."""
    lo, hi = doc_seg[vdoc], doc_seg[vdoc + 1]
    active = np.arange(len(vdoc))
    pos = lo.copy()
    out_v, out_s, out_e, out_j = [], [], [], []
    while active.size:
        s = pos[active]
        h = hi[active]
        e = np.searchsorted(seg_start, seg_start[s] + targets[active], side="left")
        e = np.minimum(np.maximum(e, s + 1), h)
        joined = np.zeros(e.size, dtype=bool)
        if join_limit:
            joined = (h - e == 1) & (seg_start[h] - seg_start[s] <= join_limit)
            e = np.where(joined, h, e)
        out_v.append(active)
        out_s.append(s)
        out_e.append(e)
        out_j.append(joined)
        pos[active] = e
        active = active[e < h]
    v, s, e, j = (np.concatenate(x) for x in (out_v, out_s, out_e, out_j))
    order = np.lexsort((s, v))
    return v[order], s[order], e[order], j[order]


def _pack_documents(doc_seg: np.ndarray, seg_start: np.ndarray, below: int) -> tuple[np.ndarray, int]:
    """Remove the document boundaries on both sides of every short document (one sentence, or fewer than
    `below` tokens): (new doc_seg, documents packed)."""
    one = (np.diff(doc_seg) == 1) | (np.diff(seg_start[doc_seg]) < below)
    keep = np.ones(doc_seg.size, dtype=bool)
    keep[1:-1] = ~(one[:-1] | one[1:])
    packed = one & ~(keep[:-1] & keep[1:])  # a boundary on either side of it was removed
    return doc_seg[keep], int(packed.sum())


def _truncate(la: np.ndarray, lb: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Final lengths of google's truncate_seq_pair (trim the longer one, the second one on a tie)."""
    excess = np.maximum(la + lb - max_tokens, 0)
    diff = np.abs(la - lb)
    one_sided = diff >= excess
    na = np.where(one_sided, np.where(la > lb, la - excess, la), (max_tokens + 1) // 2)
    nb = np.where(one_sided, np.where(la > lb, lb, lb - excess), max_tokens // 2)
    return na, nb


@dataclass
class _Plan:
    """The instances of a block, in their final (shuffled) order: segment spans into ids, SOP labels, the
    block-level statistics, and the seed of the per-instance random streams of the masking."""

    a0: np.ndarray
    na: np.ndarray
    b0: np.ndarray
    nb: np.ndarray
    swap: np.ndarray
    stats: BlockStats
    seed: np.uint64


def _plan(
    ids: np.ndarray,
    seg_start: np.ndarray,
    doc_seg: np.ndarray,
    vocab: VocabInfo,
    p: PretrainingDataConfig,
    rng: np.random.Generator,
) -> _Plan | None:
    stats = BlockStats(ngram_hist=[0] * p.ngram)
    max_tokens = p.max_seq_length - 3
    if p.pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, not {p.pairing!r}")
    if len(doc_seg) - 1 <= 0 or ids.size == 0:  # a block whose lines all tokenised to nothing
        return None
    if p.pairing == "pack":
        doc_seg, stats.packed_documents = _pack_documents(doc_seg, seg_start, p.pack_below_tokens)
    n_docs = len(doc_seg) - 1
    vdoc = np.tile(np.arange(n_docs), p.dupe_factor)
    short = rng.random(vdoc.size) < p.short_seq_prob
    targets = np.where(short, rng.integers(2, max_tokens + 1, vdoc.size), max_tokens)
    v, s, e, joined = _chunks(seg_start, doc_seg, targets, vdoc, max_tokens if p.pairing == "pack" else 0)
    stats.joined_last = int(joined.sum())
    n = v.size
    k = e - s
    u_split, u_swap = rng.random(n), rng.random(n)

    # A/B split: after 1..k-1 sentences; for one sentence, at a word start inside it.
    a_end_sent = s + 1 + np.floor(u_split * np.maximum(k - 1, 1)).astype(np.int64)
    split = seg_start[np.minimum(a_end_sent, e)]
    one = k == 1
    t0, t1 = seg_start[s], seg_start[e]
    starts = np.concatenate([[0], np.cumsum(vocab.is_start[ids])])  # word starts in ids[:i]
    first = starts[np.minimum(t0 + 1, t1)]
    n_starts = starts[t1] - first  # word boundaries inside the sentence (words - 1)
    by_word = one & (n_starts > 0)
    # j-th word boundary, j uniform in [m, n_starts + 1 - m] with m words kept on each side (m = 1 if short)
    m = np.where(n_starts + 1 >= 2 * p.min_split_words, p.min_split_words, 1) if p.pairing == "pack" else 1
    j = m + np.floor(u_split * np.maximum(n_starts + 2 - 2 * m, 1)).astype(np.int64)
    word_pos = np.searchsorted(starts, first + j, side="left") - 1
    by_token = one & ~by_word
    tok_pos = t0 + 1 + np.floor(u_split * np.maximum(t1 - t0 - 1, 1)).astype(np.int64)
    split = np.where(by_word, word_pos, np.where(by_token, tok_pos, split))
    swap = u_swap < 0.5
    a0, a1, b0, b1 = (
        np.where(swap, split, t0),
        np.where(swap, t1, split),
        np.where(swap, t0, split),
        np.where(swap, split, t1),
    )
    label = swap
    if p.pairing == "google":
        a0, a1, b0, b1, label, keep = _random_next(
            one, v, t0, t1, a0, a1, b0, b1, swap, vdoc, targets, seg_start, doc_seg, rng
        )
        stats.random_next = int(one.sum())
    else:
        keep = ~(one & (t1 - t0 < 2))
        stats.dropped_one_token = int((~keep).sum())
        stats.single_segment_split = int((one & keep).sum())
    v, a0, a1, b0, b1, label = v[keep], a0[keep], a1[keep], b0[keep], b1[keep], label[keep]
    la, lb = a1 - a0, b1 - b0
    na, nb = _truncate(la, lb, max_tokens)
    a0 = a0 + rng.binomial(la - na, 0.5)
    b0 = b0 + rng.binomial(lb - nb, 0.5)
    stats.sop_swapped = int(label.sum())
    stats.short_target = int(short[v].sum())
    # google shuffles its instances: so do we, within the block, before building them in batches.
    perm = rng.permutation(v.size)
    seed = rng.integers(0, 2**64, dtype=np.uint64)
    return _Plan(a0[perm], na[perm], b0[perm], nb[perm], label[perm], stats, seed)


def _random_next(one, v, t0, t1, a0, a1, b0, b1, swap, vdoc, targets, seg_start, doc_seg, rng):
    """google's pairing of a one-sentence chunk: A = the chunk, B = whole sentences of a random other
    document of the block from a random one, until B reaches target - len(A) (at least one), label 1."""
    n_docs = doc_seg.size - 1
    idx = np.flatnonzero(one)
    d = vdoc[v[idx]]
    other = (d + 1 + rng.integers(0, max(n_docs - 1, 1), idx.size)) % n_docs if n_docs > 1 else d
    first, count = doc_seg[other], np.diff(doc_seg)[other]
    rs = first + np.floor(rng.random(idx.size) * count).astype(np.int64)
    want = np.maximum(targets[v[idx]] - (t1[idx] - t0[idx]), 1)
    re = np.searchsorted(seg_start, seg_start[rs] + want, side="left")
    re = np.minimum(np.maximum(re, rs + 1), first + count)
    a0, a1, b0, b1, label = a0.copy(), a1.copy(), b0.copy(), b1.copy(), swap.copy()
    a0[idx], a1[idx], b0[idx], b1[idx], label[idx] = t0[idx], t1[idx], seg_start[rs], seg_start[re], True
    return a0, a1, b0, b1, label, np.ones(one.size, dtype=bool)


class _Layout:
    """google's features in FEATURES order, as the compiled writer takes them: key bytes, kinds, widths."""

    def __init__(self, p: PretrainingDataConfig):
        lengths = {"seq": p.max_seq_length, "pred": p.max_predictions_per_seq, 1: 1}
        keys = [k.encode() for k in FEATURES]
        self.widths = [lengths[length] for _, length in FEATURES.values()]
        self.is_float = np.array([kind == "float" for kind, _ in FEATURES.values()])
        self.keys = np.frombuffer(b"".join(keys), dtype=np.uint8)
        self.key_off = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64)

    def columns(self, rows: int) -> tuple[np.ndarray, ...]:
        return tuple(np.empty((rows, w), dtype=np.int64) for w in self.widths)


def _build(
    ids,
    plan: _Plan,
    lo: int,
    hi: int,
    vocab: VocabInfo,
    p: PretrainingDataConfig,
    layout: _Layout,
    cols: tuple,
    out: np.ndarray | None,
) -> tuple[int, BlockStats]:
    """Instances lo..hi of a plan through the compiled kernel: into `cols`, or framed into `out` if given."""
    from albert_exp.pretraining_data.masking import STATS, build
    from albert_exp.tfrecord_encode import CRC_TABLES

    specials = np.array([vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.pad_id], dtype=np.int64)
    size, counts, hist = build(
        ids,
        vocab.is_start,
        plan.a0[lo:hi],
        plan.na[lo:hi],
        plan.b0[lo:hi],
        plan.nb[lo:hi],
        plan.swap[lo:hi],
        lo,
        specials,
        vocab.random_ids,
        p.masked_lm_prob,
        ngram_cdf(p),
        p.whole_word_mask,
        plan.seed,
        cols,
        out is not None,
        layout.is_float,
        layout.keys,
        layout.key_off,
        CRC_TABLES,
        out if out is not None else np.empty(0, dtype=np.uint8),
    )
    stats = BlockStats(
        instances=hi - lo, ngram_hist=hist[1:].tolist(), **dict(zip(STATS, counts.tolist(), strict=True))
    )
    if lo == 0:
        stats.add(plan.stats)
    return size, stats


def make_instances(
    ids: np.ndarray,
    seg_start: np.ndarray,
    doc_seg: np.ndarray,
    vocab: VocabInfo,
    p: PretrainingDataConfig,
    rng: np.random.Generator,
    batch: int = 4096,
) -> Iterator[tuple[dict[str, np.ndarray], BlockStats]]:
    """Instances of one block of documents, in a random order, in batches of `batch` (the batch size does
    not change them: each instance's masking draws from its own stream).

    ids: token ids of all sentences, concatenated; seg_start[j]: offset of sentence j in ids (S + 1 entries);
    doc_seg[d]: first sentence of document d (D + 1 entries). Every sentence has >= 1 token.
    Yields google's features (shape [n, max_seq_length] or [n, max_predictions_per_seq]) and statistics.
    """
    plan = _plan(ids, seg_start, doc_seg, vocab, p, rng)
    if plan is None:
        return
    layout = _Layout(p)
    for lo in range(0, max(plan.a0.size, 1), batch):  # one (empty) batch if every chunk was dropped: its stats
        hi = min(lo + batch, plan.a0.size)
        cols = layout.columns(hi - lo)
        _, stats = _build(ids, plan, lo, hi, vocab, p, layout, cols, None)
        features = dict(zip(FEATURES, cols, strict=True))
        features["masked_lm_weights"] = features["masked_lm_weights"].astype(np.uint32).view(np.float32)
        yield features, stats


class RecordBuffer:
    """A reused output buffer (and one-row scratch columns) for `make_records`: `batch` records at a time."""

    def __init__(self, p: PretrainingDataConfig, batch: int = 4096):
        from albert_exp.tfrecord_encode import max_example_bytes

        self.layout = _Layout(p)
        self.scratch = self.layout.columns(1)
        per_record = max_example_bytes(
            self.layout.widths, self.layout.is_float.tolist(), np.diff(self.layout.key_off).tolist()
        )
        self.batch = batch
        self.buf = np.empty(batch * per_record, dtype=np.uint8)


def make_records(
    ids: np.ndarray,
    seg_start: np.ndarray,
    doc_seg: np.ndarray,
    vocab: VocabInfo,
    p: PretrainingDataConfig,
    rng: np.random.Generator,
    out: RecordBuffer,
) -> Iterator[tuple[memoryview, int, BlockStats]]:
    """The instances of `make_instances` (same arguments, same rng state: the same instances), as framed
    TFRecords written straight into out.buf by compiled code. Yields (bytes, records, statistics) per batch;
    the bytes are a view of the reused buffer, valid until the next step."""
    plan = _plan(ids, seg_start, doc_seg, vocab, p, rng)
    if plan is None:
        return
    for lo in range(0, max(plan.a0.size, 1), out.batch):
        hi = min(lo + out.batch, plan.a0.size)
        size, stats = _build(ids, plan, lo, hi, vocab, p, out.layout, out.scratch, out.buf)
        yield memoryview(out.buf)[:size], hi - lo, stats


def ngram_cdf(p: PretrainingDataConfig) -> np.ndarray:
    """cdf[avail, k]: P(n-gram length <= k + 1) when `avail` words are left, lengths weighted 1/n (or n)."""
    pv = 1.0 / np.arange(1, p.ngram + 1)
    if not p.favor_shorter_ngram:
        pv = pv[::-1]
    cdf = np.zeros((p.ngram + 1, p.ngram))
    for a in range(1, p.ngram + 1):
        cdf[a, :a] = np.cumsum(pv[:a]) / pv[:a].sum()
        cdf[a, a:] = 1.0
    return cdf


def block_arrays(docs: list[list[str]], tok: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenised block: (ids, seg_start, doc_seg) as `make_instances` takes them. A line with no tokens is
    dropped, as google's script does; so is a document left with no lines."""
    lines = [s for d in docs for s in d]
    ids, lens = tok.encode_lines(lines)
    doc_of_line = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    keep = lens > 0
    seg_start = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lens[keep], out=seg_start[1:])
    doc_of_seg = doc_of_line[keep]
    docs_kept = np.unique(doc_of_seg)
    doc_seg = np.searchsorted(doc_of_seg, np.append(docs_kept, len(docs)), side="left")
    return ids, seg_start, doc_seg
