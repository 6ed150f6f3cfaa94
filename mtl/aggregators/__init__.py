"""Gradient aggregators and loss weightings for multi-task training, as pure jit-able JAX functions.

Aggregators turn the (T, D) matrix J of per-task gradients of the shared body into its (D,) update,
with the scaling conventions of TorchJD 0.18 (Quinton & Rey 2024): `get('upgrad')(J)` equals
`torchjd.aggregation.UPGrad()(J)`. Every method here needs only the Gramian G = J J^T (T x T):
`get_weighting(name)` maps G to the (T,) task weights w and the aggregator returns w @ J, so the
trainer can apply weights to Gramians it already has; nothing bigger than (T, D) is materialised.

Randomness and state are explicit: PCGrad and GradVac take `key` (random visiting orders; without a
key the order is 0, 1, ..., T-1) or an explicit `order`; GradVac carries its EMA of cosine
targets as state in and out (`init('gradvac', T)` gives the first). Iterative solvers run a
bounded number of iterations inside jit; each one's stopping rule and accuracy is stated with it.

Loss weightings (uncertainty, DWA, RLW, FAMO) follow LibMTL (Lin & Zhang 2023) and are built by
`get_loss_weighting(name, num_tasks, **kwargs)`; see `LossWeighting`.

  solvers.py          T x T linear algebra and the small QPs the weightings solve
  weightings.py       Gramian -> task weights; the aggregators (`get`, `get_weighting`, `per_leaf`)
  loss_weightings.py  uncertainty, DWA, RLW, FAMO (`get_loss_weighting`)
  in_step.py          config.mtl in the training step (`aggregate_tree`, `combine_losses`, ...)
"""
from mtl.aggregators.solvers import gramian, solve_nonneg_qp, solve_simplex_qp
from mtl.aggregators.weightings import (RANDOM, STATEFUL, WEIGHTINGS, aligned_mtl_weighting,
                                        cagrad_weighting, get, get_weighting, gradvac_init,
                                        gradvac_weighting, imtl_g_weighting, init, mean_weighting,
                                        mgda_weighting, nash_mtl_weighting, pcgrad_weighting,
                                        per_leaf, sum_weighting, upgrad_weighting)
from mtl.aggregators.loss_weightings import (LOSS_WEIGHTINGS, LossWeighting, dwa_weighting,
                                             famo_weighting, get_loss_weighting, rlw_weighting,
                                             uncertainty_weighting)
from mtl.aggregators.in_step import (affinity_applies, affinity_every, aggregate_tree,
                                     aggregating, check_config, combine_losses, describe,
                                     init_step_state, update_loss_state)
