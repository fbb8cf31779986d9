import jax
import pytest
from jax.sharding import PartitionSpec as P

from rl_ring import sharding


def test_parse_and_make_mesh():
    mesh = sharding.make_mesh("data=2,seq=4")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "seq": 4, "tensor": 1}
    assert sharding.axis_size(mesh, "seq") == 4
    default = sharding.make_mesh()
    assert default.shape["seq"] == len(jax.devices())
    assert str(sharding.parse_mesh_spec("seq=8")) == "seq=8"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("data=2,seq=2", "4 devices in all .* but 8 devices"),
        ("batch=8", "unknown axis 'batch'"),
        ("seq=4,seq=2", "axis 'seq' is given twice"),
        ("seq=0", "has size 0"),
        ("seq:8", "cannot parse"),
        ("", "empty"),
    ],
)
def test_make_mesh_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(spec)


def test_too_few_devices_says_how_to_get_them():
    """`--mesh seq=3` on 1 device: the error names the fake-device flag and --devices."""
    with pytest.raises(ValueError, match=r"seq=3.*xla_force_host_platform_device_count=3"
                                         r".*--devices N"):
        sharding.make_mesh("seq=3", devices=jax.devices()[:1])


def test_fit_spec_leaves_indivisible_axis_replicated():
    mesh = sharding.make_mesh("fsdp=2,tensor=4")
    assert sharding.fit_spec(P("fsdp", "tensor"), (6, 6), mesh) == P("fsdp", None)
    assert sharding.fit_spec(P("fsdp", "tensor"), (6, 8), mesh) == P("fsdp", "tensor")
    assert sharding.fit_spec(P("fsdp"), (6, 6), None) == P("fsdp", None)


def test_init_distributed_argument_errors(monkeypatch):
    for var in ("RL_RING_COORDINATOR", "RL_RING_NUM_PROCESSES", "RL_RING_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.init_distributed() is False
    with pytest.raises(ValueError, match="together"):
        sharding.init_distributed(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id must be in"):
        sharding.init_distributed("127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="host:port"):
        sharding.init_distributed("localhost", num_processes=2, process_id=0)
    monkeypatch.setenv("RL_RING_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="RL_RING_NUM_PROCESSES='two'"):
        sharding.init_distributed()
