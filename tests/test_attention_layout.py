"""Token layouts for causal load balance: hand-computed orders, round trips, work counts."""

import jax.numpy as jnp
import numpy as np
import pytest

from rl_ring.attention import block_work, layout_positions, permute, unpermute


def test_layout_positions_by_hand():
    np.testing.assert_array_equal(layout_positions(8, 2, "contiguous"), np.arange(8))
    # zigzag: 4 chunks of 2; device 0 holds chunks 0 and 3, device 1 chunks 1 and 2.
    np.testing.assert_array_equal(layout_positions(8, 2, "zigzag"), [0, 1, 6, 7, 2, 3, 4, 5])
    # striped: device d holds d, d+2, d+4, ...
    np.testing.assert_array_equal(layout_positions(8, 2, "striped"), [0, 2, 4, 6, 1, 3, 5, 7])
    np.testing.assert_array_equal(
        layout_positions(12, 3, "zigzag"), [0, 1, 10, 11, 2, 3, 8, 9, 4, 5, 6, 7]
    )
    for layout in ("contiguous", "zigzag", "striped"):
        np.testing.assert_array_equal(layout_positions(6, 1, layout), np.arange(6))
        assert layout_positions(6, 1, layout).dtype == np.int32


@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
def test_permute_round_trip_numpy_and_jax(layout):
    x = np.arange(2 * 16 * 3).reshape(2, 16, 3)
    p = permute(x, 4, layout)
    assert isinstance(p, np.ndarray)
    pos = np.broadcast_to(layout_positions(16, 4, layout), (2, 16))
    np.testing.assert_array_equal(p[:, :, 0] // 3 % 16, pos)
    np.testing.assert_array_equal(unpermute(p, 4, layout), x)
    pj = permute(jnp.asarray(x), 4, layout)
    np.testing.assert_array_equal(np.asarray(pj), p)
    np.testing.assert_array_equal(np.asarray(unpermute(pj, 4, layout)), x)
    # Any axis: the sequence as axis 0 of a 1-D array.
    np.testing.assert_array_equal(permute(np.arange(16), 4, layout, axis=0), pos[0])


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 4, "striped"), "multiple of 4, got seq_len=10"),
        ((12, 4, "zigzag"), "multiple of 8, got seq_len=12"),
        ((8, 2, "diagonal"), "layout='diagonal' is not one of"),
        ((8, 0, "contiguous"), "num_shards must be >= 1"),
    ],
)
def test_layout_errors(args, match):
    with pytest.raises(ValueError, match=match):
        layout_positions(*args)


def test_permute_axis_error():
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        permute(np.zeros((2, 8)), 2, "zigzag", axis=2)


def test_block_work_balance_at_8_devices():
    t, n, chunk = 8192, 8, 512  # 16 chunks, 2 per device
    contiguous = block_work(t, n, "contiguous", chunk)
    np.testing.assert_array_equal(contiguous, 4 * np.arange(8) + 3)  # 3, 7, ..., 31
    assert contiguous.max() / contiguous.mean() == pytest.approx(31 / 17)
    np.testing.assert_array_equal(block_work(t, n, "zigzag", chunk), np.full(8, 17))
    # Striped: a device's first chunk holds positions [d, 4088 + d], its second chunk
    # [4096 + d, 8184 + d]. Only (first-half query chunk, second-half key chunk) pairs can be
    # skipped: 8 of 32 per device.
    np.testing.assert_array_equal(block_work(t, n, "striped", chunk), np.full(8, 24))
    non_causal = block_work(t, n, "contiguous", chunk, causal=False)
    np.testing.assert_array_equal(non_causal, np.full(8, 32))
    # Block-causal steps of 1024 tokens (two chunks): diagonal 2x2 blocks are all computed.
    np.testing.assert_array_equal(
        block_work(t, n, "contiguous", chunk, tokens_per_step=1024), 4 * np.arange(8) + 4
    )


def test_default_chunks_per_backend_and_zigzag_cap():
    from rl_ring.attention import AttentionOptions, default_chunk
    from rl_ring.attention import _zigzag_chunk_cap as cap

    assert default_chunk("cpu") == 512 and default_chunk("gpu") == 2048
    # Unset chunks under zigzag stop at T / 2n so a chunk never straddles a device's halves.
    opts = cap(AttentionOptions(), "zigzag", 4096, 8)
    assert (opts.q_chunk, opts.k_chunk) == (256, 256)
    opts = cap(AttentionOptions(k_chunk=1024), "zigzag", 4096, 8)  # explicit values are kept
    assert (opts.q_chunk, opts.k_chunk) == (256, 1024)
    assert cap(AttentionOptions(), "contiguous", 4096, 8) == AttentionOptions()
    # Unset chunks split evenly: as few chunks as with 512, the least padding.
    from rl_ring.attention.blockwise import chunk_len

    assert [chunk_len(None, n) for n in (1200, 1024, 1000, 300, 1030)] == [400, 512, 500, 300, 344]
    assert chunk_len(512, 1200) == 512 and chunk_len(4096, 1200) == 1200
    opts = cap(AttentionOptions(), "zigzag", 2 * 8 * 1200, 8)  # halves of 1200 tokens
    assert (opts.q_chunk, opts.k_chunk) == (400, 400)
    # With the cap, zigzag keeps its balance; a straddling chunk would lose the skipping.
    np.testing.assert_array_equal(block_work(4096, 8, "zigzag", 256), np.full(8, 17))
    # One 512-chunk per device spans both halves: all 8 key chunks computed, none skipped
    # (8 pairs of 512 = 32 pairs of 256, against 17 with the cap).
    np.testing.assert_array_equal(block_work(4096, 8, "zigzag", 512), np.full(8, 8))


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
def test_one_pad_rule_for_attention_loader_and_model(n, layout):
    """One rule decides which lengths split over n seq devices: ``pad_multiple``. Zigzag
    needs 2n on several devices; on one device every layout is the identity, so any length
    goes (the model used to demand an even length there while the loader padded to 1)."""
    import jax

    from rl_ring import sharding
    from rl_ring.attention.layout import check_layout, pad_multiple
    from rl_ring.models import ModelConfig, check_tokens
    from rl_ring.train.loader import MeshLoader

    want = 2 * n if layout == "zigzag" and n > 1 else n
    assert pad_multiple(n, layout) == want
    mesh = sharding.make_mesh(f"seq={n}", devices=jax.devices()[:n])
    cfg = ModelConfig.tiny(attn_layout=layout)

    def accepted(check, *args) -> bool:
        try:
            check(*args)
        except ValueError:
            return False
        return True

    for t in range(1, 3 * want + 2):
        tokens = {
            "kind": np.zeros((1, t), np.int32),
            "values": np.zeros((1, t, 8), np.float32),
            "positions": np.zeros((1, t), np.int32),
            "timesteps": np.zeros((1, t), np.int32),
        }
        verdicts = {
            "attention": accepted(check_layout, layout, t, n),
            "loader": accepted(MeshLoader(mesh, 1, layout).check_seq_len, t),
            "model": accepted(check_tokens, tokens, cfg, mesh),
        }
        assert set(verdicts.values()) == {t % want == 0}, (t, verdicts)
