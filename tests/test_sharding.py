"""FSDP's communication, read from the compiled step: the weights are gathered where a layer
uses them, never the batch's activations, and the Gramians of split gradients are summed where
they lie. Counted in the compiled program's collectives (bytes moved), placed by XLA's SPMD
partitioner, which its CPU and GPU backends share: eight fake CPU devices check the plan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mtl import gramians, op_profile, run_defaults, run_state, sharding, tasks
from mtl import step as step_lib
from mtl.models import ipt

pytestmark = pytest.mark.cpu_only  # meshes of the eight fake CPU devices


def _step_gathers(batch_size, probe):
  config = run_defaults.get_config("tiny")
  config.tasks = ("denoise_30", "sr_x2")
  config.data.batch_size, config.conflicts.batch_size = batch_size, 0
  config.mesh.data, config.mesh.fsdp = 1, 4
  run = run_state.build(config)
  batch = {s.name: jax.ShapeDtypeStruct((batch_size,) + (s.hr_crop(config.model.patch_size),) * 2
                                        + (3,), jnp.uint8, sharding=sharding.batch_sharding(
                                            run.mesh)) for s in run.model.specs}
  step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, run.model.task_names,
                                    run.plan, probe=probe))
  with jax.set_mesh(run.mesh):
    compiled = step.lower(run.abstract_state, batch).compile()
  split = [a for a, s in zip(jax.tree_util.tree_leaves(run.abstract_state.params),
                             jax.tree_util.tree_leaves(run.state_shardings.params))
           if not s.is_fully_replicated]
  gathered = op_profile.collective_bytes(compiled.as_text()).get("all-gather", 0)
  return gathered, sum(a.size * a.dtype.itemsize for a in split)


def test_an_fsdp_step_gathers_its_weights_once_whatever_the_batch():
  # Gathering a batch's activations (what XLA picks for a weight split on a feature axis, left
  # to itself) grows with the batch: at 4 and 16 images per task 7.4 and 21.5 MB here. FSDP's
  # gathers are the weights': the same bytes at any batch (3.3 MB here), each split leaf (2.0
  # MB in all) gathered at most twice, for the forward and the backward pass.
  for probe in (False, True):
    small, split = _step_gathers(4, probe)
    large, _ = _step_gathers(16, probe)
    assert split > 0 and small == large, (probe, small, large)
    assert small <= 2 * split * (4 if probe else 1), (probe, small, split)  # probe: 2T halves


def test_gramians_of_gradients_split_on_a_feature_axis_are_summed_where_they_lie():
  # The tiny body's per-task gradients (3 tasks), each leaf split 4 ways on a feature axis as
  # FSDP splits them (sharding.leaf_sharding, the task axis left whole).
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4}, jax.devices()[:4])
  body = ipt.IPT(ipt.ModelConfig(**ipt.SIZES["tiny"]),
                tasks.get_all(("sr_x2",))).abstract_params()["body"]
  rng = np.random.default_rng(0)
  grads = jax.tree_util.tree_map(  # small integers: every product and sum exact in float32
      lambda a: rng.integers(-3, 4, (3,) + a.shape).astype(np.float32), body)
  spec = lambda g: P(None, *sharding.leaf_sharding(mesh, g.shape[1:], min_size=0).spec)
  split = jax.tree_util.tree_map(lambda g: jax.device_put(g, NamedSharding(mesh, spec(g))), grads)
  assert sum(any(spec(g)) for g in jax.tree_util.tree_leaves(grads)) > 10
  with jax.set_mesh(mesh):
    compiled = jax.jit(gramians.leaf_gramians).lower(split).compile()
    got = compiled(split)
  assert "all-gather" not in compiled.as_text()  # a (T, T) all-reduce per leaf instead
  per_layer = jax.tree_util.tree_leaves(ipt.unstack_layers(grads, axis=1))
  want = np.stack([g.reshape(3, -1) @ g.reshape(3, -1).T for g in per_layer])
  assert len(want) == len(ipt.shared_layer_names(body))
  np.testing.assert_array_equal(np.asarray(got), want)


def test_per_image_degradations_run_on_each_device_s_share_of_the_batch():
  # derain and deblur convolve by FFT, which XLA's partitioner does not split (it gathered the
  # whole batch onto every device and degraded it there); per_batch_shard keeps each image on
  # its device. The same images get the same draws; an FFT over 1 image and over 8 round
  # differently (measured: 4.6e-5 at most on [0, 255]), an image given another's draws would
  # move by tens.
  config = run_defaults.get_config("tiny")
  specs = tasks.get_all(("derain", "deblur", "dehaze"))
  rng = np.random.default_rng(0)
  batch = {s.name: rng.integers(0, 256, (8, 24, 24, 3)).astype(np.uint8) for s in specs}
  degrade = jax.jit(lambda b: step_lib.degrade_batch(specs, [1, 2, 3], config, 5, b))
  want = jax.device_get(degrade(batch))
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1})
  with jax.set_mesh(mesh):
    split = sharding.to_global(batch, mesh)
    compiled = degrade.lower(split).compile()
    got = jax.device_get(compiled(split))
  assert op_profile.collective_bytes(compiled.as_text()) == {}
  for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
