"""Hashing, sorting and chunking helpers (docs/algorithm.md §1.2-1.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import lsh


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_buckets_range_shape_and_dtype():
    x = _normal(0, (2, 3, 64, 16))
    b = lsh.hash_vectors(x, key=jax.random.key(1), n_buckets=8, n_hashes=4)
    assert b.shape == (2, 3, 4, 64) and b.dtype == jnp.int32
    assert int(b.min()) >= 0 and int(b.max()) < 8
    # 2 * 3 * 4 * 64 draws over 8 buckets: every bucket is used.
    assert len(np.unique(np.asarray(b))) == 8


def test_same_key_same_buckets_other_key_other_buckets():
    x = _normal(0, (1, 2, 128, 16))
    b1 = lsh.hash_vectors(x, key=jax.random.key(7), n_buckets=16, n_hashes=2)
    b2 = lsh.hash_vectors(x, key=jax.random.key(7), n_buckets=16, n_hashes=2)
    b3 = lsh.hash_vectors(x, key=jax.random.key(8), n_buckets=16, n_hashes=2)
    np.testing.assert_array_equal(b1, b2)
    # Independent rotations agree on about 1/16 of the vectors.
    assert np.mean(np.asarray(b1) == np.asarray(b3)) < 0.3


def test_rotations_differ_per_head_and_round():
    x = jnp.broadcast_to(_normal(0, (1, 1, 256, 16)), (1, 2, 256, 16))
    b = np.asarray(lsh.hash_vectors(x, key=jax.random.key(3), n_buckets=16, n_hashes=2))
    assert np.mean(b[0, 0] == b[0, 1]) < 0.3  # same vectors, two heads
    assert np.mean(b[0, 0, 0] == b[0, 0, 1]) < 0.3  # same vectors, two rounds


def test_per_example_rotations():
    x = jnp.broadcast_to(_normal(0, (1, 1, 256, 16)), (2, 1, 256, 16))
    shared = np.asarray(lsh.hash_vectors(x, key=jax.random.key(3), n_buckets=16, n_hashes=1))
    np.testing.assert_array_equal(shared[0], shared[1])
    own = np.asarray(
        lsh.hash_vectors(x, key=jax.random.key(3), n_buckets=16, n_hashes=1, per_example=True)
    )
    assert np.mean(own[0] == own[1]) < 0.3


def test_scale_invariant():
    # Angular LSH: the bucket of q equals the bucket of q / |q| (docs/algorithm.md §1.2).
    x = _normal(0, (1, 2, 64, 8))
    scale = jnp.exp(_normal(1, (1, 2, 64, 1)))
    b1 = lsh.hash_vectors(x, key=jax.random.key(2), n_buckets=8, n_hashes=3)
    b2 = lsh.hash_vectors(x * scale, key=jax.random.key(2), n_buckets=8, n_hashes=3)
    np.testing.assert_array_equal(b1, b2)


def test_near_vectors_collide_more_than_far_ones():
    d, n = 32, 4096
    x = _normal(0, (1, 1, n, d))
    near = x + 0.1 * _normal(1, (1, 1, n, d))  # angle ~ 6 degrees
    far = _normal(2, (1, 1, n, d))  # independent: ~ 90 degrees
    key = jax.random.key(3)

    def collide(a, b):
        both = lsh.hash_vectors(jnp.concatenate([a, b], 2), key=key, n_buckets=16, n_hashes=4)
        return float(jnp.mean(both[..., :n] == both[..., n:]))

    p_near, p_far = collide(x, near), collide(x, far)
    # Measured with this seed: 0.90 near, 0.066 far (chance is 1/16).
    assert p_near > 0.8, p_near
    assert p_far < 0.1, p_far


def test_factorised_buckets_match_formula():
    # bucket = a_1 + f_1 * a_2, each a_k the argmax over its own f_k/2 columns.
    x = _normal(0, (1, 2, 50, 8))
    key = jax.random.key(5)
    got = np.asarray(lsh.hash_vectors(x, key=key, n_buckets=[4, 6], n_hashes=2))
    rot = np.asarray(jax.random.normal(key, (1, 2, 8, 2, 5), jnp.float32))
    proj = np.einsum("bhld,bhdrk->bhrlk", np.asarray(x), rot)
    a1 = np.argmax(np.concatenate([proj[..., :2], -proj[..., :2]], -1), -1)
    a2 = np.argmax(np.concatenate([proj[..., 2:], -proj[..., 2:]], -1), -1)
    np.testing.assert_array_equal(got, a1 + 4 * a2)
    assert got.max() < 24 and len(np.unique(got)) > 18


@pytest.mark.parametrize("bad", [3, 0, -2, [4, 3], [], [4, 2.0], True])
def test_bad_bucket_counts(bad):
    with pytest.raises(ValueError, match="n_buckets"):
        lsh.hash_vectors(_normal(0, (1, 1, 8, 4)), key=jax.random.key(0), n_buckets=bad, n_hashes=1)


def test_bad_hash_inputs():
    with pytest.raises(ValueError, match="n_hashes"):
        lsh.hash_vectors(_normal(0, (1, 1, 8, 4)), key=jax.random.key(0), n_buckets=4, n_hashes=0)
    with pytest.raises(ValueError, match="rank 4"):
        lsh.hash_vectors(_normal(0, (8, 4)), key=jax.random.key(0), n_buckets=4, n_hashes=1)


def test_default_n_buckets():
    assert lsh.default_n_buckets(1024, 64) == 32
    assert lsh.default_n_buckets(100, 64) == 4  # ceil(200 / 64) = 4
    assert lsh.default_n_buckets(65536, 256) == [32, 16]
    assert lsh.default_n_buckets(12288, 128) == [16, 12]
    assert lsh.total_buckets(lsh.default_n_buckets(1 << 20, 64)) == 2 * (1 << 20) // 64


def test_sort_orders_by_round_bucket_position():
    buckets = jax.random.randint(jax.random.key(0), (2, 3, 4, 40), 0, 6)
    perm, inv = lsh.sort_by_bucket(buckets, 6)
    perm, inv, buckets = map(np.asarray, (perm, inv, buckets))
    rounds, pos = perm // 40, perm % 40
    sort_key = (rounds * 6 + np.take_along_axis(buckets.reshape(2, 3, -1), perm, -1)) * 40 + pos
    assert np.all(np.diff(sort_key, axis=-1) > 0)  # strictly increasing: a total order
    np.testing.assert_array_equal(
        np.take_along_axis(perm, inv, -1), np.broadcast_to(np.arange(160), (2, 3, 160))
    )


def test_permute_gradient_is_the_inverse_gather():
    buckets = jax.random.randint(jax.random.key(0), (1, 2, 2, 16), 0, 4)
    perm, inv = lsh.sort_by_bucket(buckets, 4)
    x = _normal(1, (1, 2, 32, 3))
    ct = _normal(2, (1, 2, 32, 3))
    plain = jax.vjp(lambda x: jnp.take_along_axis(x, perm[..., None], axis=2), x)[1](ct)[0]
    ours = jax.vjp(lambda x: lsh.permute(x, perm, inv), x)[1](ct)[0]
    np.testing.assert_array_equal(ours, plain)


def test_look_around_wraps_and_window_clamps():
    x = jnp.arange(4 * 2).reshape(1, 1, 4, 2)  # 4 chunks of 2
    w = np.asarray(lsh.look_around(x, 1, 1))[0, 0]
    np.testing.assert_array_equal(w[0], [6, 7, 0, 1, 2, 3])
    np.testing.assert_array_equal(w[3], [4, 5, 6, 7, 0, 1])
    assert lsh.window_sizes(1, 1, 0) == (0, 0)
    assert lsh.window_sizes(3, 2, 2) == (2, 0)
    assert lsh.window_sizes(8, 1, 1) == (1, 1)


def test_look_around_wraps_around_the_first_wrap_chunks():
    x = jnp.arange(2 * 5 * 2).reshape(2, 1, 5, 2)  # 2 examples, 5 chunks of 2
    # Example 0 wraps around its first 3 chunks, example 1 around all 5.
    w = np.asarray(lsh.look_around(x, 1, 1, jnp.array([3, 5])))[:, 0]
    np.testing.assert_array_equal(w[0, 0], [4, 5, 0, 1, 2, 3])
    np.testing.assert_array_equal(w[0, 2], [2, 3, 4, 5, 0, 1])
    np.testing.assert_array_equal(w[1, 0], [18, 19, 10, 11, 12, 13])
    static = np.asarray(lsh.look_around(x, 1, 0, 3))[1, 0]
    np.testing.assert_array_equal(static[0], [14, 15, 10, 11])


def test_sort_puts_padding_after_every_round():
    buckets = jnp.array([[[[1, 0, 1, 0], [0, 1, 0, 1]]]])  # [b=1, h=1, r=2, l=4]
    valid = jnp.array([[True, True, True, False]])
    perm, inv = lsh.sort_by_bucket(buckets, 2, valid)
    # Round 0: bucket 0 {1}, bucket 1 {0, 2}; round 1: bucket 0 {0, 2}, bucket 1 {1};
    # then the pad's copies (position 3 of rounds 0 and 1).
    np.testing.assert_array_equal(perm[0, 0], [1, 0, 2, 4, 6, 5, 3, 7])
    np.testing.assert_array_equal(jnp.take_along_axis(inv, perm, axis=-1)[0, 0], np.arange(8))
