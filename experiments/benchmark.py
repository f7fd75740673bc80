"""Benchmark: one JSON line per measurement, on the current devices.

  python -m experiments.benchmark --config=experiments/configs/cifar10.py \
      [--retrain_config=experiments/configs/cifar10_retrain.py] [--depths=8,20] \
      [--batch_sizes=256,96] [--what=search,train,input,convs,peer,profile] [--steps=10]
      [--peer_dir=PC-DARTS]

* `search`: the search step (architecture + weight update) for each depth in
  `--depths` (paired with `--batch_sizes` when given): images/s, ms/step, trace and
  compile seconds, FLOPs per step (convolutions and matrix products, every loop body
  times its trip count: `dnas_jax/tools/flops.py`) and the achieved FLOP/s, XLA's own cost
  analysis beside them (it counts a loop body once), peak device memory, device kind
  and count.
* `train`: the retraining step of `--retrain_config`.
* `input`: the host input pipeline's own images/s (crop, flip, normalise) at the
  search batch size.
* `prefetch`: search steps/s fed through the loop's input path (augmentation,
  sharding) without and with `--prefetch` batches prepared ahead by a host thread, and
  their ratio, measured in the same run.
* `peer`: our search step against the official PC-DARTS search step on the same
  setting (depth, channels, batch, image size; first order; random data), one process
  at a time: ours is compiled and timed, the peer's runs in a subprocess from the
  checkout `--peer_dir` (git clone https://github.com/yuhuixu1993/PC-DARTS; torch
  needed, `pip install -e ".[peer]"`) with `--peer_threads` torch threads (default:
  every core, as XLA uses), then ours is timed again. One JSON line with both and
  `speedup` (the peer's time per step over ours). `--peer_python` runs the peer with
  another interpreter (one that has torch).
* `profile` (CPU): where the search step's time goes, from XLA's per-instruction trace:
  ms/step per operation kind and per half of the step (architecture, weight) and
  direction (forward, backward), with trace + lower and compile seconds
  (`dnas_jax/tools/step_profile.py`); one JSON line, and the tables in Markdown on
  stderr. Its instruction events slow the step down a little: measure steps/s apart.
* `convs`: convolution instructions of the lowered search step for each depth (the
  supernet's program does not grow with depth).
* `aot`: compiles the search step, the search's evaluation step and (with
  `--retrain_config`) the retraining step for `--aot_chips` chips of the TPU topology
  `--aot_topology` (default v5e:2x2) from this CPU host, without a TPU
  (`--aot_programs`: search_step, search_eval_step, train_step, mixed_edge): trace + lower
  and compile seconds, the executable's memory (argument, output, temporary bytes)
  against the chip's HBM, convolutions and fusions in the compiled HLO. Needs
  `pip install -e ".[tpu-aot]"`; nothing else may be measured in the same run.
* `stream` (no `--config` needed): the streaming pipeline's host part
  (`dnas_jax/data/streaming.py`) against JPEG decoding alone on the same files with the
  same `--workers` processes: both in images/s per worker and their ratio; and the
  device part (`device_augment.prepare`, colour jitter and normalisation) in ms per
  batch on this CPU (`dnas_jax/tools/stream_benchmark.py`).
  `--data_dir` is a folder tree (its `train/<class>/` images); without it,
  `--stream_images` JPEGs of 400×350 are written to a temporary folder.
Images are random, of the dataset's shape (`--image_size`, default 32).
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from dnas_jax.data import input_pipeline
from dnas_jax.tools import benchmarking
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Search config.")
_RETRAIN = config_flags.DEFINE_config_file("retrain_config", None, "Retraining config.")
_DEPTHS = flags.DEFINE_list("depths", [], "Search depths to measure (default: config's).")
_BATCHES = flags.DEFINE_list("batch_sizes", [], "Batch size per depth (default: config's).")
_WHAT = flags.DEFINE_list("what", ["search", "train", "input"], "What to measure.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_IMAGE = flags.DEFINE_integer("image_size", 32, "Image height and width.")
_CHANNELS = flags.DEFINE_integer("image_channels", 3, "Image channels.")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "Batches ahead for --what=prefetch.")
_TOPOLOGY = flags.DEFINE_string("aot_topology", "v5e:2x2", "TPU topology for --what=aot.")
_CHIPS = flags.DEFINE_integer(
  "aot_chips", 1, "Chips of the topology the program uses (data parallel) for --what=aot."
)
_PEER_DIR = flags.DEFINE_string("peer_dir", None, "A PC-DARTS checkout for --what=peer.")
_PEER_PYTHON = flags.DEFINE_string(
  "peer_python", None, "Python with torch for --what=peer (default: this one)."
)
_PEER_THREADS = flags.DEFINE_integer(
  "peer_threads", 0, "Torch threads for --what=peer (0: every core)."
)
_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes for --what=stream.")
_STREAM_IMAGES = flags.DEFINE_integer(
  "stream_images",
  3000,
  "JPEGs to synthesize for --what=stream (without --data_dir); with 1000 each round "
  "lasts under a second and the rounds' ratios scatter widely.",
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "A folder tree (ROOT/train/<class>/*.JPEG) for --what=stream."
)
_PROGRAMS = flags.DEFINE_list(
  "aot_programs",
  ["search_step", "search_eval_step", "train_step"],
  "Programs to compile for --what=aot.",
)


def _emit(record):
  print(json.dumps(record), flush=True)


def main(argv):
  del argv
  if "stream" in _WHAT.value:
    from dnas_jax.tools import stream_benchmark  # pylint: disable=g-import-not-at-top

    with cli.user_errors():
      _emit(
        stream_benchmark.measure(
          _DATA_DIR.value, _STREAM_IMAGES.value, _WORKERS.value, image_size=224
        )
      )
    if _WHAT.value == ["stream"]:
      return
  if _CONFIG.value is None:
    raise app.UsageError("--config is needed for every --what but stream")
  config = cli.config_value(_CONFIG)
  shape = (_IMAGE.value, _IMAGE.value, _CHANNELS.value)
  depths = [int(d) for d in _DEPTHS.value] or [config.model.num_layers]
  batches = [int(b) for b in _BATCHES.value] or [config.batch_size] * len(depths)
  if len(batches) != len(depths):
    raise app.UsageError("--batch_sizes needs one value per --depths value")
  if "aot" in _WHAT.value:
    if _WHAT.value != ["aot"]:
      raise app.UsageError("--what=aot compiles for a TPU on the CPU: measure it alone")
    from dnas_jax.tools import aot  # pylint: disable=g-import-not-at-top

    with cli.user_errors():
      aot.prepare_environment(_TOPOLOGY.value)
      for depth, batch in zip(depths, batches):
        c = config.copy_and_resolve_references()
        c.model.num_layers, c.batch_size = depth, batch
        for record in benchmarking.aot_compile(
          c,
          _RETRAIN.value if depth == depths[0] else None,
          _TOPOLOGY.value,
          shape,
          num_chips=_CHIPS.value,
          programs=_PROGRAMS.value,
        ):
          _emit(record)
    return
  if "profile" in _WHAT.value:
    from dnas_jax.tools import step_profile  # pylint: disable=g-import-not-at-top

    step_profile.enable_instruction_events()  # before JAX's CPU backend starts
  if "peer" in _WHAT.value and not _PEER_DIR.value:
    raise app.UsageError(
      "--what=peer needs --peer_dir (a checkout of https://github.com/yuhuixu1993/PC-DARTS)"
    )
  with cli.user_errors():
    for depth, batch in zip(depths, batches):
      c = config.copy_and_resolve_references()
      c.model.num_layers, c.batch_size = depth, batch
      if "peer" in _WHAT.value:
        _emit(
          benchmarking.benchmark_peer(
            c,
            _PEER_DIR.value,
            shape,
            steps=_STEPS.value,
            warmup=_WARMUP.value,
            peer_python=_PEER_PYTHON.value,
            threads=_PEER_THREADS.value or None,
          )
        )
      if "profile" in _WHAT.value:
        record = step_profile.profile_search_step(
          c, shape, steps=_STEPS.value, warmup=_WARMUP.value
        )
        _emit(record)
        print(step_profile.markdown(record), file=sys.stderr, flush=True)
      if "convs" in _WHAT.value:
        _emit(
          {
            "what": "convolutions",
            "num_layers": depth,
            "convolutions": benchmarking.count_convolutions(c, shape),
          }
        )
      if "search" in _WHAT.value:
        _emit(
          benchmarking.benchmark_search_step(c, shape, steps=_STEPS.value, warmup=_WARMUP.value)
        )
      if "prefetch" in _WHAT.value:
        _emit(
          benchmarking.benchmark_prefetch(
            c, shape, steps=_STEPS.value, warmup=_WARMUP.value, prefetch=_PREFETCH.value
          )
        )
    if "train" in _WHAT.value and _RETRAIN.value is not None:
      _emit(
        benchmarking.benchmark_train_step(
          _RETRAIN.value, shape, steps=_STEPS.value, warmup=_WARMUP.value
        )
      )
    if "input" in _WHAT.value:
      from dnas_jax.tools import data_benchmark  # pylint: disable=g-import-not-at-top

      ds = data_benchmark.random_dataset(10_000, shape[0], shape[2])
      aug = input_pipeline.AugmentConfig(
        crop_padding=config.data.crop_padding, flip=config.data.flip
      )
      _emit(
        {
          "what": "input_pipeline",
          "batch_size": batches[0],
          "image_shape": list(shape),
          "images_per_s": round(
            data_benchmark.measure_input_throughput(ds, batches[0], aug, 2.0), 1
          ),
        }
      )


if __name__ == "__main__":
  cli.run(main)
