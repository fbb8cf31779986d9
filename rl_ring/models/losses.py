"""Action losses over per-token predictions, weighted by the batch's loss mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def action_loss(
    pred: jax.Array, tokens: dict[str, jax.Array], *, discrete: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked action loss, normalised by the sum of the mask.

    Continuous actions: the squared error to ``tokens["target"]`` averaged over action
    dimensions at each token. Discrete actions: the cross-entropy of the logits against
    ``tokens["target_ids"]``. Either way the per-token losses are weighted by
    ``tokens["loss_mask"]`` and divided by its sum (a batch with an empty mask has loss 0).

    Args:
        pred: ``[B, T, A]`` action means or logits.
        tokens: the token fields; uses ``loss_mask`` and ``target`` or ``target_ids``.
        discrete: which target and loss to use.

    Returns:
        ``(loss, metrics)``; metrics hold ``loss``, ``mse`` (continuous) or ``accuracy``
        (discrete, mask-weighted), and ``num_targets`` (the mask sum).

    Raises:
        ValueError: the target's shape does not match the prediction's.
    """
    mask = jnp.asarray(tokens["loss_mask"]).astype(jnp.float32)
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"tokens['loss_mask'] has shape {mask.shape}, expected {pred.shape[:2]}")
    pred = pred.astype(jnp.float32)
    total = jnp.sum(mask)
    denom = jnp.maximum(total, 1e-8)
    metrics: dict[str, jax.Array] = {"num_targets": total}
    if discrete:
        ids = jnp.asarray(tokens["target_ids"]).astype(jnp.int32)
        if ids.shape != pred.shape[:2]:
            raise ValueError(
                f"tokens['target_ids'] has shape {ids.shape}, expected {pred.shape[:2]}"
            )
        logp = jax.nn.log_softmax(pred, axis=-1)
        nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
        loss = jnp.sum(nll * mask) / denom
        correct = (jnp.argmax(pred, axis=-1) == ids).astype(jnp.float32)
        metrics["accuracy"] = jnp.sum(correct * mask) / denom
    else:
        target = jnp.asarray(tokens["target"]).astype(jnp.float32)
        if target.shape != pred.shape:
            raise ValueError(f"tokens['target'] has shape {target.shape}, expected {pred.shape}")
        per_token = jnp.mean(jnp.square(pred - target), axis=-1)
        loss = jnp.sum(per_token * mask) / denom
        metrics["mse"] = loss
    metrics["loss"] = loss
    return loss, metrics


def model_action_loss(model, tokens, *, mesh=None, rngs=None):
    """Masked action loss of ``model``'s predictions on ``tokens``; dropout on when ``rngs``
    is given (the training loss of every agent: a Recipe's ``loss_fn``).

    Returns:
        ``(loss, metrics)`` as :func:`action_loss`.
    """
    pred = model(tokens, mesh=mesh, deterministic=rngs is None, rngs=rngs)
    return action_loss(pred, tokens, discrete=model.cfg.discrete_actions)
