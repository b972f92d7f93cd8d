"""Slow, plainly written float64 references for the attention tests.

Nothing here is shared with the library: the sort, the windows, the masks and
the duplicate counts are rebuilt per query with Python loops over numpy arrays,
straight from docs/algorithm.md §1-§2.
"""

from __future__ import annotations

import numpy as np

MASK = 1e9
SELF = 1e5


def _softmax_lse(logits):
    m = logits.max()
    lse = m + np.log(np.exp(logits - m).sum())
    return np.exp(logits - lse), lse


def normalized_keys(q):
    q = np.asarray(q, np.float64)
    k = q / np.sqrt(np.mean(q * q, axis=-1, keepdims=True) + 1e-6)
    return k / np.sqrt(q.shape[-1])


def lsh_attention(
    qk,
    v,
    buckets,
    *,
    chunk_len,
    causal=True,
    n_chunks_before=1,
    n_chunks_after=0,
    dedup=False,
    mask=None,
):
    """LSH attention given buckets [b, h, r, l]; returns float64 [b, h, l, e].

    Padded positions (mask False) take no part: their rows of the result are 0.
    """
    qk = np.asarray(qk, np.float64)
    v = np.asarray(v, np.float64)
    buckets = np.asarray(buckets)
    bsz, heads, length, _ = qk.shape
    n_hashes = buckets.shape[2]
    c = chunk_len
    valid = np.ones((bsz, length), bool) if mask is None else np.asarray(mask, bool)
    keys = normalized_keys(qk)
    out = np.zeros(v.shape, np.float64)

    for b in range(bsz):
        # Padding takes no slot at all: only the real tokens are sorted and
        # chunked, so the windows wrap around the chunks of real tokens.
        real = [t for t in range(length) if valid[b, t]]
        n_slots = n_hashes * len(real)
        n_chunks = -(-n_slots // c)
        before = min(n_chunks_before, n_chunks - 1)
        after = min(n_chunks_after, n_chunks - 1 - before)
        for h in range(heads):
            # Sorted slots: (round, bucket, position).
            items = sorted((r, int(buckets[b, h, r, t]), t) for r in range(n_hashes) for t in real)
            slot_pos = [t for _, _, t in items]
            slot_of = {(r, t): s for s, (r, _, t) in enumerate(items)}

            def window(slot, n_chunks=n_chunks, before=before, after=after, n_slots=n_slots):
                k = slot // c
                chunks = [(k + o) % n_chunks for o in range(-before, after + 1)]
                return [s for ch in chunks for s in range(ch * c, min((ch + 1) * c, n_slots))]

            for t in real:
                if dedup:
                    counts = np.zeros(length)
                    for r in range(n_hashes):
                        for s in window(slot_of[(r, t)]):
                            counts[slot_pos[s]] += 1
                outs, lses = [], []
                for r in range(n_hashes):
                    slots = window(slot_of[(r, t)])
                    pos = np.array([slot_pos[s] for s in slots])
                    logits = np.array([qk[b, h, t] @ keys[b, h, p] for p in pos])
                    if causal:
                        logits -= MASK * (pos > t)
                    logits -= SELF * (pos == t)
                    if dedup:
                        logits -= np.log(counts[pos])
                    probs, lse = _softmax_lse(logits)
                    vals = v[b, h, pos]
                    outs.append(probs @ vals)
                    lses.append(lse)
                w, _ = _softmax_lse(np.array(lses))
                out[b, h, t] = sum(wr * o for wr, o in zip(w, outs, strict=True))
    return out


def full_attention(q, k, v, *, causal, mask=None, shared_qk=False):
    """Dense attention in float64 from the definition; k is ignored if shared_qk."""
    q = np.asarray(q, np.float64)
    v = np.asarray(v, np.float64)
    length, d = q.shape[2], q.shape[3]
    if shared_qk:
        logits = np.einsum("bhid,bhjd->bhij", q, normalized_keys(q))
        logits -= SELF * np.eye(length)
    else:
        logits = np.einsum("bhid,bhjd->bhij", q, np.asarray(k, np.float64)) / np.sqrt(d)
    if causal:
        logits -= MASK * np.triu(np.ones((length, length)), 1)
    if mask is not None:
        logits -= MASK * ~np.asarray(mask, bool)[:, None, None, :]
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    return probs @ v


def local_attention(
    q, k, v, *, chunk_len, causal=True, n_chunks_before=1, n_chunks_after=0, mask=None
):
    """Each query attends to keys whose chunk is within [-before, +after] of its own."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    length, d = q.shape[2], q.shape[3]
    chunk = np.arange(length) // chunk_len
    offset = chunk[None, :] - chunk[:, None]
    allowed = (offset >= -n_chunks_before) & (offset <= n_chunks_after)
    logits = np.einsum("bhid,bhjd->bhij", q, k) / np.sqrt(d)
    logits -= MASK * ~allowed
    if causal:
        logits -= MASK * np.triu(np.ones((length, length)), 1)
    if mask is not None:
        logits -= MASK * ~np.asarray(mask, bool)[:, None, None, :]
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    return probs @ np.asarray(v, np.float64)
