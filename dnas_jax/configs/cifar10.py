"""DNAS global search on CIFAR-10: the paper's setting.

Command:
  python -m experiments.search --config=experiments/configs/cifar10.py \
      --workdir=workdirs/cifar10_dnas [--config.data.data_dir=DIR]

Produces in the workdir: Orbax checkpoints (resumed automatically), TensorBoard event
files, `genotype.json` (one cell per layer), `genotype.txt`, `psi.npy` [20, 14, 7] and
the figures `global_architecture.png`, `psi_heatmaps.png`.

Why these values (Xu & He 2022, §4; docs/design.md §1):
* The paper searches the entire model directly, so the search network has the depth it
  is retrained at: L = 20 cells, C = 16 initial channels, partial channels K = 4.
* "The same hyperparameter setting as DARTS": 50 epochs; weights by SGD, lr 0.025
  cosine to 0.001, momentum 0.9, weight decay 3e-4, gradient clip 5.
* With partial channels it takes PC-DARTS's architecture optimiser: Adam lr 6e-4,
  betas (0.5, 0.999), L2 1e-3, and a 15-epoch warm-up before architecture updates.
* Batch 96 for both halves of the training set (K = 4 leaves memory to spare; a
  larger batch is a config change); zero-one loss weight 10 (FairDARTS); skip-connect
  dropout 0.2 during the search.
* ψ is the decoupled form (formula 4) with the β softmax over a layer's 14 connections.
* Against skip-connect collapse, the project's reading of the paper (docs/design.md §1):
  - skip dropout `constant` 0.2: the paper gives the rate, no schedule (P-DARTS decays);
  - zero-one loss on the `factors` σ(α), σ(γ): FairDARTS's loss on ψ's sigmoid factors;
  - derivation `top_k`, 2 edges per node, no skip cap: DARTS's parse, per layer;
  - architecture batches by `permutation`: every architecture image once per epoch.
Every value can be overridden with --config.FIELD=value.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: the training set is halved into the weight part and the architecture part.
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar10"  # a registered name, or your own data's name
  # auto | tfds | archive | digits | synthetic; your own files: npz | folder | tfds:<name>
  config.data.source = "auto"
  config.data.data_dir = ""  # where the archive or the TFDS data lives
  config.data.path = ""  # source npz: the .npz file; folder: the folder tree
  config.data.image_size = 0  # resize every image to this square size (0: keep)
  config.data.train_split = "train"  # folder and tfds:<name>: the splits' names
  config.data.test_split = "test"
  config.data.train_portion = 0.5
  config.data.crop_padding = 4
  config.data.flip = True
  # The architecture's batches: each epoch one permutation of its half cut into batches
  # (permutation), or each step a fresh random batch (independent: DARTS's and
  # PC-DARTS's next(iter(valid_queue))).
  config.data.arch_sampling = "permutation"

  # Supernet.
  config.model = ml_collections.ConfigDict()
  config.model.num_layers = 20
  config.model.channels = 16
  config.model.partial_k = 4
  config.model.primitives = "dnas"  # dnas (7 ops) | darts (8, with none) | op,op,...
  # A user's operations: .py file paths or module names, comma-separated, imported
  # before the config is checked (docs/extending.md).
  config.model.ops_modules = ""
  config.model.skip_dropout = 0.2
  # constant | decay (P-DARTS: linear over the warm-up, then exp(-0.2) per epoch;
  # dnas_jax/models/skip_dropout.py).
  config.model.skip_dropout_schedule = "constant"
  config.model.dtype = "float32"  # float32 | bfloat16 (parameters stay float32)

  # Architecture parameterisation (dnas_jax/models/arch.py).
  config.arch = ml_collections.ConfigDict()
  config.arch.kind = "decoupled"  # decoupled (DNAS) | iam (DARTS) | full (global)
  # The β softmax over a layer's 14 connections (formula 4) or over each node's incoming
  # ones (PC-DARTS's edge normalisation); σβ(β) also weights the bypassed channels.
  config.arch.beta_domain = "layer"  # layer | node
  config.arch.alpha_sharing = "global"  # global | cell_type
  config.arch.alpha_activation = "sigmoid"
  config.arch.beta_activation = "softmax"
  config.arch.gamma_activation = "sigmoid"
  config.arch.init_scale = 1e-3
  # iam | full only: PC-DARTS's edge weights (a softmax per node, the whole edge).
  config.arch.edge_normalization = False

  # Optimisation.
  config.optim = ml_collections.ConfigDict()
  config.optim.weight_lr = 0.025
  config.optim.weight_min_lr = 0.001
  config.optim.momentum = 0.9
  config.optim.weight_decay = 3e-4
  config.optim.grad_clip = 5.0
  config.optim.arch_lr = 6e-4
  config.optim.arch_b1 = 0.5
  config.optim.arch_b2 = 0.999
  config.optim.arch_weight_decay = 1e-3
  config.optim.arch_warmup_epochs = 15
  config.optim.zero_one_weight = 10.0
  # What the zero-one loss pushes to 0 or 1: factors (one mean over the sigmoid factors
  # σ(α), σ(γ) together) | psi (ψ itself) | per_factor (each factor's own mean, summed).
  config.optim.zero_one_target = "factors"
  config.optim.second_order = False

  # How the step is written for XLA: the same numbers (up to float rounding), different
  # compile and step times. "auto": the measured best for the backend the run is on
  # (dnas_jax/models/program.py AUTO_PROGRAM; docs/performance.md).
  config.program = ml_collections.ConfigDict()
  config.program.depthwise = "auto"  # auto | conv (grouped) | shifted (k² taps) | kernel (CPU)
  config.program.pointwise = "auto"  # auto | conv (1×1 conv) | einsum | broadcast
  config.program.edges = "auto"  # auto | vmap (leading edge axis) | channels (beside C)
  config.program.halves = "auto"  # auto | shared (one traced body) | separate
  config.program.remat = "auto"  # auto | none | convs (keep only conv outputs)
  config.program.scan = "auto"  # auto | stages (one scan per stage) | none (per cell)
  config.program.optimizer = "auto"  # auto | optax (leaf by leaf) | kernel (one CPU call)

  # Derivation of the genotype written after every epoch (space/genotype.py
  # `Derivation`; experiments.derive takes the same options as flags): top_k (per node
  # the edges_per_node strongest connections, DARTS) | threshold (those whose operation
  # weight reaches op_threshold, FairDARTS); max_skip_connects caps the skip-connects
  # of each normal cell by dropping the weakest (P-DARTS: 2; -1: no cap).
  config.derive = ml_collections.ConfigDict()
  config.derive.rule = "top_k"
  config.derive.edges_per_node = 2
  config.derive.op_threshold = 0.85
  config.derive.max_skip_connects = -1

  # Loop.
  config.num_epochs = 50
  config.batch_size = 96
  config.eval_batch_size = 256
  config.eval_every_epochs = 1
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.distributed = False  # call jax.distributed.initialize() (multi-host)
  # Batches prepared ahead by a host thread while the device runs a step (0: none).
  config.prefetch = 2
  # A jax.profiler trace of `num_steps` steps from `first_step` into WORKDIR/plugins/
  # profile (TensorBoard's profile tab, or the .trace.json.gz in Perfetto); 0: none.
  config.profile = ml_collections.ConfigDict()
  config.profile.first_step = 10
  config.profile.num_steps = 0
  return config
