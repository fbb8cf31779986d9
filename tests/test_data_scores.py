import numpy as np
import pytest

from rl_ring.data.scores import has_reference, normalized_score, reference_key


def test_hand_computed_scores():
    # 100 * (R - min) / (max - min), worked by hand from the D4RL constants.
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("hopper", -20.272305) == pytest.approx(0.0, abs=1e-12)
    # (1627.1 + 20.272305) / (3234.3 + 20.272305) = 1647.372305 / 3254.572305 = 0.506172
    assert normalized_score("gym:Hopper-v5", 1627.1) == pytest.approx(50.6172, abs=1e-4)
    # halfcheetah: (6000 + 280.178953) / 12415.178953
    assert normalized_score("halfcheetah-medium-expert-v2", 6000.0) == pytest.approx(
        50.5847, abs=1e-4
    )
    # walker2d: (2296.964504 - 1.629008) / 4590.670992 = 0.5 exactly
    assert normalized_score("Walker2d-v4", 2296.964504) == pytest.approx(50.0, abs=1e-9)
    out = normalized_score("walker2d-medium-replay-v2", np.array([1.629008, 4592.3]))
    np.testing.assert_allclose(out, [0.0, 100.0], atol=1e-9)
    assert out.dtype == np.float64


def test_other_d4rl_names():
    assert normalized_score("antmaze-large-play-v2", 0.5) == pytest.approx(50.0)
    assert normalized_score("kitchen-mixed-v0", 3.0) == pytest.approx(75.0)
    assert reference_key("maze2d-umaze-v1") == "maze2d-umaze"
    assert reference_key("maze2d-umaze-dense-v1") == "maze2d-umaze-dense"
    assert reference_key("ant-medium-v2") == "ant"
    assert reference_key("pen-human-v1") == "pen"
    # maze2d-umaze (sparse): (92.855 - 23.85) / (161.86 - 23.85) = 0.5
    assert normalized_score("maze2d-umaze-v1", 92.855) == pytest.approx(50.0)


def test_unknown_names():
    for name in ("walker_run", "cheetah_run", "bullet-hopper-medium-v0", "maze2d-weird-v1"):
        assert not has_reference(name)
    assert has_reference("HalfCheetah-v5") and has_reference("hopper")
    with pytest.raises(KeyError, match=r"no D4RL reference score for 'walker_run'.*halfcheetah"):
        normalized_score("walker_run", 500.0)
