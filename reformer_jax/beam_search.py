"""Beam search over any cached decoder: fixed shapes, one `lax.while_loop`, exact early stop.

    search(first_log_probs [b, v], state, step, reorder, *, beam_size, max_len,
           eos_id, length_penalty=0.6, early_stop=True, pad_id=0) -> BeamResult
    tile(tree, beam_size, axis=0) -> tree with each batch row repeated beam_size times
    gather_rows(tree, rows [n], axis=0) -> tree with rows picked along axis

Einsum legend: b examples, k = beam_size beams per example, v vocabulary,
t = max_len new tokens. The model is three things the caller supplies: the
log-probs of the first new token of each example ([b, v], the prompt read
once), a decoding state for b * k rows (row i * k + j = example i, beam j;
`tile` builds it from a state of b rows), and

    step(state, tokens [b*k]) -> (log_probs [b*k, v] of the next token, state)
    reorder(state, rows int32 [b*k]) -> state whose row r is the old row rows[r]

(`gather_rows` is a reorder for any pytree with a batch axis). Nothing here
knows the model, so a decoder-only LM and an encoder-decoder share it.

Scoring is GNMT's (Wu et al. 2016, section 7, without the coverage term), as
in tensor2tensor: a finished hypothesis y of length |y| scores

    score(y) = log P(y) / lp(|y|),    lp(n) = ((5 + n) / 6) ** length_penalty,

log P(y) the sum of its token log-probs. A hypothesis finishes when it emits
eos_id (|y| counts the EOS token), or when it reaches max_len tokens without
one: it is then scored by the same formula at |y| = max_len (it is a
candidate like any other, not discarded). eos_id=None: no token ends a
hypothesis, every one runs to max_len.

Each step extends every alive beam by every token, takes the 2k best
extensions by log P (at most k of them end in EOS, so k of them stay alive),
moves those ending in EOS (all of them at the last step) into the finished
set, keeping its k best scores, and keeps the k best others alive.

Early stop (exact, not heuristic). Token log-probs are <= 0, so an alive beam
with sum S (S <= 0) after n tokens can only finish as y with log P(y) <= S
and n < |y| <= max_len, hence

    score(y) <= S / lp(|y|) <= max(S / lp(n + 1), S / lp(max_len)),

because S / lp(m) is monotone in m (lp is increasing for length_penalty > 0,
decreasing for < 0, constant for 0) and a monotone function peaks at an end
of the interval: for length_penalty > 0 the bound is S / lp(max_len), for < 0
it is S / lp(n + 1). An extension's bound is never above its parent's (its sum
is lower and its interval a sub-interval), and the worst finished score only
rises, so once no alive beam's bound reaches an example's worst finished
score (its k-th, which must be finite: k hypotheses found), nothing later can
enter that example's finished set. The loop stops when that holds for every
example, and returns exactly what running to max_len would. This needs
`step` to return true log-probabilities (<= 0, e.g. a log_softmax).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
NEG_INF = -jnp.inf


@flax.struct.dataclass
class BeamResult:
    """The k finished hypotheses of each example, best first.

    ids: int32 [b, k, t], pad_id after each hypothesis's length.
    scores: float32 [b, k], log P / lp(length); -inf marks an empty slot
        (fewer than k hypotheses with non-zero probability), with length 0.
    lengths: int32 [b, k], tokens including the EOS token.
    log_probs: float32 [b, k], log P of each hypothesis (the sum, unnormalised).
    steps: int32 scalar, positions chosen before the loop stopped (<= t; `step`
        ran steps - 1 times).
    """

    ids: Array
    scores: Array
    lengths: Array
    log_probs: Array
    steps: Array


def tile(tree: PyTree, beam_size: int, axis: int = 0) -> PyTree:
    """Each row of `axis` repeated beam_size times: row i -> rows i*k .. i*k + k - 1."""
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x, beam_size, axis=axis), tree)


def gather_rows(tree: PyTree, rows: Array, axis: int = 0) -> PyTree:
    """Row r of `axis` in every leaf becomes the old row rows[r] (a beam reorder)."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=axis), tree)


def length_penalty_of(length: Array, alpha: float) -> Array:
    """GNMT's lp(n) = ((5 + n) / 6) ** alpha (Wu et al. 2016, section 7)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** jnp.asarray(alpha, jnp.float32)


def _gather(x: Array, idx: Array) -> Array:
    """x [b, n, ...], idx [b, m] -> [b, m, ...]: per-example rows."""
    return jax.vmap(lambda a, i: a[i])(x, idx)


def search(
    first_log_probs: Array,
    state: PyTree,
    step: Callable[[PyTree, Array], tuple[Array, PyTree]],
    reorder: Callable[[PyTree, Array], PyTree],
    *,
    beam_size: int,
    max_len: int,
    eos_id: int | None,
    length_penalty: float = 0.6,
    early_stop: bool = True,
    pad_id: int = 0,
) -> BeamResult:
    """Beam search from first_log_probs [b, v] and a state of b * beam_size rows (see module doc).

    Traceable (jit it around the caller's model); `step` runs at most
    max_len - 1 times, never after the last token is chosen.
    """
    b, v = first_log_probs.shape
    k, t = beam_size, max_len
    if k < 1 or t < 1:
        raise ValueError(f"beam_size and max_len must be >= 1, got {k} and {t}.")
    eos = -1 if eos_id is None else eos_id  # -1 never matches a token
    n_cand = min(2 * k, k * v)  # 2k: enough for k alive after up to k EOS endings
    lp = lambda n: length_penalty_of(n, length_penalty)
    examples = jnp.arange(b)[:, None]

    def choose(i, log_probs, carry):
        """Picks position i's tokens from log_probs [b, k, v] -> new carry, parent rows [b*k]."""
        alive_seq, alive_sum, fin_seq, fin_score, fin_sum, fin_len, _ = carry
        sums = (alive_sum[:, :, None] + log_probs.astype(jnp.float32)).reshape(b, k * v)
        cand_sum, flat = jax.lax.top_k(sums, n_cand)  # [b, 2k]
        beam, token = flat // v, (flat % v).astype(jnp.int32)
        cand_seq = _gather(alive_seq, beam).at[:, :, i].set(token)  # [b, 2k, t]
        ends = (token == eos) | (i == t - 1)
        cand_score = jnp.where(ends, cand_sum / lp(i + 1), NEG_INF)
        # Finished set: the k best of the old k and the new candidates (old first
        # on ties, lax.top_k keeps the lower index).
        all_score = jnp.concatenate([fin_score, cand_score], axis=1)
        fin_score, pick = jax.lax.top_k(all_score, k)
        fin_seq = _gather(jnp.concatenate([fin_seq, cand_seq], axis=1), pick)
        fin_sum = _gather(jnp.concatenate([fin_sum, cand_sum], axis=1), pick)
        cand_len = jnp.full(cand_sum.shape, i + 1, jnp.int32)
        fin_len = _gather(jnp.concatenate([fin_len, cand_len], axis=1), pick)
        # Alive: the k best extensions that did not end in EOS.
        alive_sum, keep = jax.lax.top_k(jnp.where(token == eos, NEG_INF, cand_sum), k)
        alive_seq = _gather(cand_seq, keep)
        parents = (examples * k + _gather(beam, keep)).reshape(b * k)
        # The bound of the module doc, for completions of length i + 2 .. t.
        bound = jnp.maximum(alive_sum / lp(i + 2), alive_sum / lp(t)).max(axis=1)
        worst = fin_score[:, -1]
        done = (bound < worst) | (bound == NEG_INF)  # -inf: nothing alive can finish
        return (alive_seq, alive_sum, fin_seq, fin_score, fin_sum, fin_len, done), parents

    # Before the first token only beam 0 of each example is alive (all its rows
    # hold the same state), so the first choice does not pick k copies of one token.
    alive_sum = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF) * jnp.ones((b, 1))
    carry = (
        jnp.full((b, k, t), pad_id, jnp.int32),
        alive_sum.astype(jnp.float32),
        jnp.full((b, k, t), pad_id, jnp.int32),
        jnp.full((b, k), NEG_INF, jnp.float32),
        jnp.full((b, k), NEG_INF, jnp.float32),
        jnp.zeros((b, k), jnp.int32),
        jnp.zeros((b,), bool),
    )
    first = jnp.broadcast_to(first_log_probs[:, None, :], (b, k, v))
    carry, parents = choose(0, first, carry)

    def cond(loop):
        i, carry, _, _ = loop
        running = i < t
        if early_stop:
            running = running & ~jnp.all(carry[-1])
        return running

    def body(loop):
        i, carry, state, parents = loop
        # Reorder lazily, here, so the last chosen beams cost no gather.
        state = reorder(state, parents)
        log_probs, state = step(state, carry[0][:, :, i - 1].reshape(b * k))
        carry, parents = choose(i, log_probs.reshape(b, k, v), carry)
        return i + 1, carry, state, parents

    steps, carry, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), carry, state, parents))
    _, _, fin_seq, fin_score, fin_sum, fin_len, _ = carry
    empty = fin_score == NEG_INF
    fin_len = jnp.where(empty, 0, fin_len)
    fin_seq = jnp.where(jnp.arange(t) < fin_len[:, :, None], fin_seq, pad_id)
    return BeamResult(
        ids=fin_seq, scores=fin_score, lengths=fin_len, log_probs=fin_sum, steps=steps
    )
