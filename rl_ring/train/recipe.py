"""What the generic training loop needs from an agent: a model, a loss and a sampler.

The loop knows nothing of agents. :class:`Recipe` bundles a model factory, a loss function,
a sampler factory and the JSON facts that a checkpoint must carry for evaluation; the
caller (``agents.run.recipe`` for an agent) builds it and passes it in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flax import nnx
from jax.sharding import Mesh

from rl_ring.data.batch import TokenBatch
from rl_ring.models import placement
from rl_ring.train.state import ParamSpecsFn, PyTree, replicate_all
from rl_ring.train.step import LossFn


class Sampler(Protocol):
    """A stream of host-local TokenBatches whose position can be saved and restored."""

    def next_batch(self) -> TokenBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


SamplerFactory = Callable[..., Sampler]
"""Called as ``make_sampler(batch_size=, seed=, host_id=, num_hosts=, pad_multiple=)``.

``batch_size`` is the global batch; the sampler of host ``host_id`` of ``num_hosts`` returns
its ``batch_size // num_hosts`` rows of it, sequences padded to a multiple of ``pad_multiple``.
"""


@dataclass
class Recipe:
    """Everything the training loop needs to train one model on one data stream.

    Attributes:
        make_model: builds the NNX model from ``nnx.Rngs`` (called under ``jax.jit``).
        loss_fn: ``loss_fn(model, tokens, *, mesh, rngs) -> (loss, metrics)``.
        make_sampler: builds this process's sampler (see :data:`SamplerFactory`).
        layout: attention token layout; the loader permutes batches to match.
        param_specs: ``(abstract parameter State, mesh) -> PartitionSpec tree`` (default:
            replicate; :func:`rule_specs` for the trajectory transformer).
        meta: JSON saved in every checkpoint (agent name and config, model spec,
            normalisation statistics) so evaluation can rebuild the model.
    """

    make_model: Callable[[nnx.Rngs], nnx.Module]
    loss_fn: LossFn
    make_sampler: SamplerFactory
    layout: str = "contiguous"
    param_specs: ParamSpecsFn = replicate_all
    meta: dict[str, Any] = field(default_factory=dict)


def rule_specs(params: nnx.State, mesh: Mesh) -> PyTree:
    """PartitionSpecs of a model's parameters by the logical axes its layers declare and the
    rule table beside the model (``rl_ring.models.placement.RULES``)."""
    return placement.param_specs(params, mesh)


def model_loss(model, tokens, *, mesh=None, rngs=None):
    """The action loss of a ``TrajectoryTransformer``'s predictions (dropout when ``rngs``)."""
    from rl_ring.models import action_loss

    pred = model(tokens, mesh=mesh, deterministic=rngs is None, rngs=rngs)
    return action_loss(pred, tokens, discrete=model.cfg.discrete_actions)
