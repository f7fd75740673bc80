"""The retraining fed by the streaming pipeline (`config.data.streaming`), end to end on a
tiny ImageNet-like set of JPEGs (tests/jpeg_data.py): ImageNet's network at 32×32, run as
the entry point in worker processes from the TFDS array_record copy, killed (SIGKILL)
after a checkpoint and resumed; the result equals, bit for bit, an uninterrupted run
from the folder copy of the same images."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jpeg_data  # tests/jpeg_data.py
import run_helpers as rh  # tests/run_helpers.py
from dnas_jax import api
from dnas_jax.configs import imagenet_retrain
from dnas_jax.training import checkpoints
from dnas_jax.training import loop as training_loop
from dnas_jax.training import validation

CLASSES = ("ant", "bee", "cat", "dog")
NUM_TRAIN, NUM_VAL = 192, 52  # 12 steps of 16 per epoch; the last test batch padded

# ImageNet's network (three stride-2 stem convolutions) on 32×32 crops, 3 cells at C = 4,
# no auxiliary head (its 5×5 pooling needs 224×224 inputs), 3 epochs of 12 steps;
# every other field is configs/test_retrain.py's (checkpoints every 5 steps).
OVERRIDES = {
  "data.streaming": True,
  "data.image_size": 32,
  "data.crop_padding": 0,
  "data.cutout": 0,
  "model.network": "imagenet",
  "model.num_layers": 3,
  "model.channels": 4,
  "eval_batch_size": 16,
  "num_epochs": 3,
}


def _tfds_args(tfds_dir, workers):
  return [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + [
    "--config.data.dataset=tiny_jpegs",
    f"--config.data.source=tfds:{jpeg_data.TFDS_NAME}",
    f"--config.data.data_dir={tfds_dir}",
    f"--config.data.workers={workers}",
  ]


def _finished_steps(workdir):
  return checkpoints.finished_steps(os.path.join(workdir, "checkpoints"))


def test_killed_streamed_retraining_resumes_with_the_same_batches(tmp_path):
  root, tfds_dir = jpeg_data.write_tiny_imagenet(tmp_path, CLASSES, NUM_TRAIN, NUM_VAL)
  run = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/test_retrain.py"]
  env = dict(os.environ, PYTHONPATH=rh.ROOT, JAX_PLATFORMS="cpu")
  log = tmp_path / "killed.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(
      cmd + _tfds_args(tfds_dir, workers=2) + [f"--workdir={run}"],
      cwd=rh.ROOT,
      env=env,
      stdout=out,
      stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while not _finished_steps(run) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  killed_at = _finished_steps(run)
  assert killed_at and killed_at[-1] < NUM_TRAIN // 16 * 3, log.read_text()[-3000:]
  meta = checkpoints.restore_meta(os.path.join(run, "checkpoints"))
  saved = meta[training_loop.DATA_ITERATOR]
  steps_per_epoch = NUM_TRAIN // 16
  assert (saved["epoch"], saved["step"]) == divmod(killed_at[-1], steps_per_epoch)
  assert saved["workers"] == 2 and "grain" in saved

  # Resumed without worker processes (a harmless change); the reference reads the
  # folder copy of the same JPEGs, uninterrupted. All three runs are the entry point,
  # so they compile alike.
  resumed = rh.cli("experiments.train", *cmd[3:], *_tfds_args(tfds_dir, 0), f"--workdir={run}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  ref = str(tmp_path / "reference")
  folder = [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + [
    "--config.data.dataset=tiny_jpegs",
    "--config.data.source=folder",
    f"--config.data.path={root}",
    "--config.data.test_split=val",
  ]
  done = rh.cli("experiments.train", *cmd[3:], *folder, f"--workdir={ref}")
  assert done.returncode == 0, done.stderr[-3000:]
  a, b = api.restore_train_run(run), api.restore_train_run(ref)
  assert a.step == b.step == steps_per_epoch * 3
  same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a.state, b.state)
  assert all(jax.tree.leaves(same)), same
  final = json.loads(open(os.path.join(run, training_loop.FINAL_METRICS)).read())
  assert final == json.loads(open(os.path.join(ref, training_loop.FINAL_METRICS)).read())


def test_streaming_config_fields_are_checked_in_one_line():
  config = imagenet_retrain.get_config()
  validation.validate_train_config(config)  # streams imagenet2012, 224×224
  spec = validation.dataset_spec(rh.config(config, **{"data.source": "folder"}))
  assert (spec.num_classes, spec.image_shape) == (1000, (224, 224, 3))
  bad = [
    ({"data.streaming": False}, "config.data.streaming=True"),
    ({"data.image_size": 0}, "config.data.image_size"),
    ({"data.workers": -1}, "config.data.workers=-1"),
  ]
  for fields, part in bad:
    with pytest.raises(validation.ConfigError, match=re.escape(part)) as e:
      validation.validate_train_config(rh.config(imagenet_retrain.get_config(), **fields))
    assert "\n" not in str(e.value)
  search = rh.config()
  search.data.streaming = True
  with pytest.raises(validation.ConfigError, match="experiments.train"):
    validation.validate_search_config(search)
