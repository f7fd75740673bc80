"""Losses and per-batch metrics of a classifier."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy over the batch (integer labels). With `label_smoothing`
  ε > 0 the target is (1 - ε) · one-hot + ε / K over the K classes, DARTS's
  `CrossEntropyLabelSmooth` (quark0/darts `cnn/train_imagenet.py`): (1 - ε) · the
  negative log-likelihood of the label + ε · the mean over classes of -log p. ε = 0 (a
  Python number) traces the plain cross-entropy, unchanged."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  uniform = -jnp.mean(log_p, axis=-1)
  return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)
