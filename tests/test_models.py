"""Models: the custom-VJP and im2col convolutions equal XLA's at every order, the argmax-routed
max-pool equals flax's and is right under jit/vmap/map after BatchNorm; BatchNorm uses batch statistics."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import maml
from metajax.core import Task, losses


@pytest.mark.parametrize("size", [1, 3, 5])
def test_matmul_conv_equals_xla_conv_with_second_order_gradients(size, key):
  x = jax.random.normal(key, (2, 7, 6, 3))
  fast = metajax.models.Conv(4, size=size, impl="matmul")
  ref = metajax.models.Conv(4, size=size, impl="xla")
  params = fast.init(key, x)
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  f = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
  gg = lambda m: jax.grad(lambda p: jnp.sum(jax.tree.leaves(jax.grad(f(m))(p))[0] ** 2))(params)
  chex.assert_trees_all_close(gg(fast), gg(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw", [(4, 4), (7, 5), (28, 28)])
def test_max_pool_and_its_gradient_equal_flax_max_pool(hw, key):
  x = jax.random.normal(key, (2, *hw, 3))
  want = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(metajax.models.max_pool_2x2(x), want)
  cotangent = jax.random.normal(key, want.shape)
  grad = lambda pool: jax.vjp(pool, x)[1](cotangent)[0]
  np.testing.assert_allclose(grad(metajax.models.max_pool_2x2),
                             grad(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2), padding="VALID")), atol=1e-6)


def test_max_pool_routes_ties_and_nans_to_the_first_argmax():
  x = jnp.array([[1.0, 1.0], [1.0, 1.0]])[None, :, :, None]    # a tie: all to the first element
  np.testing.assert_array_equal(jax.grad(lambda v: metajax.models.max_pool_2x2(v).sum())(x)[0, :, :, 0],
                                [[1.0, 0.0], [0.0, 0.0]])
  x = jnp.array([[0.0, 2.0], [jnp.nan, 5.0]])[None, :, :, None]  # NaN is the maximum, as in jnp.argmax
  assert np.isnan(metajax.models.max_pool_2x2(x)).all()
  np.testing.assert_array_equal(jax.grad(lambda v: metajax.models.max_pool_2x2(v).sum())(x)[0, :, :, 0],
                                [[0.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("order", ["first", "second"])
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_conv4_gradients_under_jit_of_vmap_and_map_equal_eager(order, seed):
  """The max-pool after BatchNorm: jit(vmap(grad)) and jit(lax.map(grad)) equal an eager reference."""
  key = jax.random.PRNGKey(seed)
  model = metajax.models.Conv4(num_classes=3, width=4)
  x = jax.random.normal(key, (3, 2, 6, 16, 16, 1))                  # (tasks, support/query, n, h, w, c)
  y = jax.random.randint(key, (3, 6), 0, 3)
  params, apply_fn = metajax.models.functional(model, model.init(key, x[0, 0]))
  loss = lambda p, xs, ys: losses.cross_entropy(apply_fn(p, xs), ys)

  def objective(p, xs, ys):
    if order == "first":
      return loss(p, xs[0], ys)
    inner = jax.grad(loss)(p, xs[0], ys)
    return loss(jax.tree.map(lambda a, g: a - 0.4 * g, p, inner), xs[1], ys)

  grad = jax.grad(objective)
  with jax.disable_jit():
    want = jax.vmap(grad, in_axes=(None, 0, 0))(params, x, y)
  by_vmap = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(params, x, y)
  by_map = jax.jit(lambda p, x, y: jax.lax.map(lambda t: grad(p, *t), (x, y)))(params, x, y)
  chex.assert_trees_all_close(by_vmap, want, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(by_map, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,c_in,c_out", [(1, 5, 3), (2, 6, 6), (2, 3, 6), (3, 1, 6), (3, 6, 3), (5, 2, 6)])
def test_conv2d_first_and_second_derivatives_equal_lax_conv_at_float64(size, c_in, c_out):
  """Both forward paths (im2col up to 4 input channels, XLA's conv above) in the primal and in
  the input-gradient convolution (c_out channels in), even and odd kernels."""
  with jax.enable_x64(True):
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(size), 3)
    x = jax.random.normal(kx, (2, 7, 6, c_in), jnp.float64)
    w = jax.random.normal(kw, (size, size, c_in, c_out), jnp.float64)
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(metajax.models.conv2d(x, w), ref(x, w), rtol=1e-12, atol=1e-12)
    cotangent = jax.random.normal(kc, (2, 7, 6, c_out), jnp.float64)
    first = lambda conv: jax.vjp(conv, x, w)[1](cotangent)
    chex.assert_trees_all_close(first(metajax.models.conv2d), first(ref), rtol=1e-12, atol=1e-12)
    # Second order: the gradient of a function of both first derivatives, w.r.t. input and kernel.
    second = lambda conv: jax.grad(lambda x, w: sum(
        jnp.sum(jnp.sin(d)) for d in jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * cotangent),
                                              argnums=(0, 1))(x, w)), argnums=(0, 1))(x, w)
    chex.assert_trees_all_close(second(metajax.models.conv2d), second(ref), rtol=1e-10, atol=1e-10)


def test_conv2d_computes_in_the_promoted_dtype_and_returns_input_dtype_gradients(key):
  for c_in in (2, 6):
    x = jax.random.normal(key, (1, 5, 5, c_in), jnp.bfloat16)
    w = jax.random.normal(key, (3, 3, c_in, 4), jnp.float32)
    assert metajax.models.conv2d(x, w).dtype == jnp.float32
    gx, gw = jax.grad(lambda x, w: metajax.models.conv2d(x, w).sum(), argnums=(0, 1))(x, w)
    assert (gx.dtype, gw.dtype) == (jnp.bfloat16, jnp.float32)


def test_conv_impls_agree_and_auto_is_the_custom_vjp_on_cpu(key):
  x = jax.random.normal(key, (2, 9, 9, 6))
  params = metajax.models.Conv(4, impl="xla").init(key, x)
  outs = {impl: metajax.models.Conv(4, impl=impl).apply(params, x) for impl in ("auto", "vjp", "matmul", "xla")}
  for impl, out in outs.items():
    np.testing.assert_allclose(out, outs["xla"], rtol=1e-5, atol=1e-5, err_msg=impl)
  jaxpr = str(jax.make_jaxpr(metajax.models.Conv(4).apply)(params, x))
  assert ("custom_vjp_call" in jaxpr) == (jax.default_backend() == "cpu")


def test_conv_kernel_init_defaults_to_nn_conv_and_takes_another(key):
  x = jnp.zeros((1, 5, 5, 2))
  kernel = lambda **kw: metajax.models.Conv(3, **kw).init(key, x)["params"]["kernel"]
  np.testing.assert_array_equal(kernel(), nn.Conv(3, (3, 3)).init(key, x)["params"]["kernel"])
  np.testing.assert_array_equal(kernel(kernel_init=nn.initializers.constant(0.5)), np.full((3, 3, 2, 3), 0.5))


def test_conv4_torch_inits_are_pytorchs_defaults_and_lecun_is_the_default(key):
  x = jnp.zeros((1, 28, 28, 1))

  def blocks(**options) -> list[tuple[np.ndarray, np.ndarray]]:  # (kernel, BatchNorm scale) of each block
    params = metajax.models.Conv4(num_classes=None, width=32, **options).init(key, x)["params"]
    return [(params[f"conv_{i}"]["kernel"], params[f"norm_{i}"]["scale"]) for i in range(4)]

  for (lecun, ones), (torch, ones_too), (kernel, scale), c_in in zip(
      blocks(), blocks(conv_init="torch"), blocks(conv_init="torch_legacy"), (1, 32, 32, 32)):
    bound = 1 / np.sqrt(9 * c_in)  # PyTorch's Conv2d: kaiming_uniform_(a=sqrt(5)), uniform on +-1/sqrt(fan_in)
    assert np.abs(torch).max() <= bound and np.abs(torch).max() > 0.95 * bound
    np.testing.assert_allclose(np.std(torch), bound / np.sqrt(3), rtol=0.15)
    assert np.abs(lecun).max() > bound  # normal, std 1/sqrt(fan_in): beyond the uniform's bound
    np.testing.assert_array_equal(kernel, torch)  # the legacy init differs only in the scales
    assert np.all(ones == 1) and np.all(ones_too == 1)
    assert np.all((scale >= 0) & (scale < 1)) and len(np.unique(scale)) == 32 and 0.3 < np.mean(scale) < 0.7
  np.testing.assert_array_equal(blocks()[1][0], blocks(conv_init="lecun")[1][0])
  with pytest.raises(ValueError, match="unknown conv_init 'xavier'; choose one of"):
    metajax.models.Conv4(conv_init="xavier").init(key, x)
  setup = lambda **kw: metajax.learners.registry.Setup(**kw)
  assert setup(x_shape=(28, 28, 1), ways=5, conv_init="torch").backbone().conv_init == "torch"
  with pytest.raises(ValueError, match="Setup: conv_init 'torch' sets Conv4's blocks; x_shape \\(1,\\) is not"):
    setup(conv_init="torch")


def test_sung_init_starts_the_relation_network_as_its_code(key):
  """Sung et al.'s weights_init: conv kernels N(0, 2/(9 x out channels)), BatchNorm scales 1, and
  the relation module's linear layers N(0, 0.01) with biases 1."""
  params = metajax.models.Conv4(num_classes=None, width=32, conv_init="sung").init(key, jnp.zeros((1, 28, 28, 1)))
  relation = metajax.models.RelationModule(width=32, conv_init="sung").init(key, jnp.zeros((2, 5, 5, 64)))
  for p, blocks in ((params["params"], 4), (relation["params"], 2)):
    for i in range(blocks):
      np.testing.assert_allclose(np.std(p[f"conv_{i}"]["kernel"]), np.sqrt(2 / (9 * 32)), rtol=0.15)
      assert np.all(p[f"norm_{i}"]["scale"] == 1)
  linear = relation["params"]
  np.testing.assert_allclose(np.std(linear["hidden"]["kernel"]), 0.01, rtol=0.15)
  assert np.all(linear["hidden"]["bias"] == 1) and np.all(linear["out"]["bias"] == 1)
  flax_default = metajax.models.RelationModule(width=32).init(key, jnp.zeros((2, 5, 5, 64)))["params"]
  assert np.all(flax_default["out"]["bias"] == 0) and np.std(flax_default["hidden"]["kernel"]) > 0.1
  setup = metajax.learners.registry.Setup(x_shape=(28, 28, 1), ways=5, conv_init="sung", unpadded_blocks=2)
  built = metajax.learners.registry.get("relation").build(setup, key)[1]
  assert np.all(built["relation"]["out"]["bias"] == 1)  # the Setup's conv_init reaches the relation module


def test_conv4_shapes(key):
  """Traced, not run (``jax.eval_shape``): eager Conv4 compiles each op at each shape."""
  def output_shape(model, x_shape):
    def forward(x):
      params, apply_fn = metajax.models.functional(model, model.init(key, x))
      return apply_fn(params, x)
    return jax.eval_shape(forward, jax.ShapeDtypeStruct(x_shape, jnp.float32)).shape

  assert output_shape(metajax.models.Conv4(num_classes=5, width=8), (3, 28, 28, 1)) == (3, 5)
  assert output_shape(metajax.models.Conv4(num_classes=5, width=4), (3, 84, 84, 3)) == (3, 5)
  assert output_shape(metajax.models.Conv4(num_classes=None, width=8), (2, 28, 28, 1)) == (2, 8)


def test_batchnorm_normalises_with_the_statistics_of_the_batch(key):
  model = metajax.models.Conv4(num_classes=3, width=4)
  x = jax.random.normal(key, (4, 16, 16, 1))
  params, apply_fn = metajax.models.functional(model, model.init(key, x))
  out = apply_fn(params, x)
  other = x.at[1:].set(jax.random.normal(jax.random.PRNGKey(9), (3, 16, 16, 1)))
  assert not np.allclose(apply_fn(params, other)[0], out[0]), "example 0 must depend on its batch"
  # Scaling the whole batch is undone by batch statistics (up to BatchNorm epsilon).
  np.testing.assert_allclose(apply_fn(params, 3.0 * x)[0], out[0], rtol=1e-3, atol=1e-3)


def test_functional_rejects_variables_without_params():
  with pytest.raises(ValueError, match="params"):
    metajax.models.functional(metajax.models.MLP(), {"batch_stats": {}})


def _image_batch(key, tasks=3, ways=3, shots=1, queries=2, hw=16):
  k1, k2 = jax.random.split(key)
  xs = jax.random.normal(k1, (tasks, ways * shots, hw, hw, 1))
  xq = jax.random.normal(k2, (tasks, ways * queries, hw, hw, 1))
  ys = jnp.tile(jnp.repeat(jnp.arange(ways), shots), (tasks, 1))
  yq = jnp.tile(jnp.repeat(jnp.arange(ways), queries), (tasks, 1))
  return Task(xs, ys, xq, yq)


def test_conv4_maml_with_batchnorm_strategies_agree(key):
  model = metajax.models.Conv4(num_classes=3, width=4)
  batch = _image_batch(key)
  params, apply_fn = metajax.models.functional(model, model.init(key, batch.x_support[0]))
  results = []
  for strategy in ("vmap", "map", "unroll"):
    config = maml.MAMLConfig(apply_fn, loss_fn=losses.cross_entropy, optimizer=optax.sgd(1.0),
                             metrics_fn=lambda p, y: {"accuracy": losses.accuracy(p, y)},
                             inner_lr=0.4, inner_steps=2, task_strategy=strategy)
    state, metrics = maml.meta_step(maml.init(config, params, key), batch, config=config)
    assert np.isfinite(float(metrics["loss"]))
    results.append(state.meta_params)
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(results[0], results[2], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 40 s on 2 cores; Conv4's conv path is the same layer and is tested by default
def test_resnet12_shapes_and_second_order_gradients(key):
  model = metajax.models.ResNet12(num_classes=5, widths=(4, 6, 8, 8))
  x = jax.random.normal(key, (5, 16, 16, 3))
  params, apply_fn = metajax.models.functional(model, model.init(key, x))
  assert apply_fn(params, x).shape == (5, 5)
  features = metajax.models.ResNet12(num_classes=None, widths=(4, 6, 8, 8))
  assert features.apply(features.init(key, x), x, mutable=["batch_stats"])[0].shape == (5, 8)
  config = maml.MAMLConfig(apply_fn, loss_fn=losses.cross_entropy, inner_lr=0.1)
  batch = _image_batch(key, tasks=2, ways=5, hw=16)
  batch = batch._replace(x_support=jnp.repeat(batch.x_support, 3, -1), x_query=jnp.repeat(batch.x_query, 3, -1))
  grads = jax.grad(lambda mp: maml.task_objective(config, mp, jax.tree.map(lambda a: a[0], batch))[0])(
      maml.init(config, params, key).meta_params)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) >= len(norms) - 4


def test_auto_strategy_runs_image_tasks_as_a_loop_on_one_cpu_device(key):
  """Regression: mean_task_grads resolved "auto" without the batch, so image tasks were vmapped on CPU."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    pytest.skip("the map default applies to a single CPU device")
  images, vectors = _image_batch(key), Task(*(jnp.zeros((3, 2, 1)),) * 4)
  task_grad = lambda task: (jnp.sum(task.x_query), {})
  loops = lambda b: "scan" in str(jax.make_jaxpr(lambda b: metajax.core.mean_task_grads(task_grad, b, "auto"))(b))
  assert loops(images) and not loops(vectors)


def test_relation_embedding_keeps_maps_and_relation_module_scores_pairs(key):
  embed = metajax.models.Conv4(num_classes=None, width=8, pooled_blocks=2, features="maps")
  x = jnp.zeros((3, 28, 28, 1))
  params, embed_fn = metajax.models.functional(embed, embed.init(key, x))
  maps = embed_fn(params, x)
  assert maps.shape == (3, 7, 7, 8)  # pooled twice: 28 -> 14 -> 7
  module = metajax.models.RelationModule(width=8, hidden=4)
  pairs = jnp.concatenate([maps, maps], axis=-1)
  rel_params, rel_fn = metajax.models.functional(module, module.init(key, pairs))
  assert rel_fn(rel_params, pairs).shape == (3,)
  assert rel_params["hidden"]["kernel"].shape == (8, 4)  # 7 -> 3 -> 1 spatially, 8 channels
  with pytest.raises(ValueError, match="pooled_blocks must be an int in"):
    metajax.models.Conv4(num_classes=None, pooled_blocks=5).init(key, x)
  with pytest.raises(ValueError, match="features=.maps. returns feature maps and needs num_classes=None"):
    metajax.models.Conv4(num_classes=5, features="maps").init(key, x)
  with pytest.raises(ValueError, match=r"expected \(m, h, w, 2c\)"):
    module.init(key, jnp.zeros((3, 16)))


@pytest.mark.parametrize("hw,c_in", [((28, 28), 1), ((7, 7), 6), ((14, 9), 3), ((4, 4), 5)])
def test_strided_conv2d_and_its_derivatives_equal_lax_conv_at_float64(hw, c_in):
  """Stride 2, SAME (odd and even sizes: TensorFlow's padding, the extra pixel at the end), in
  reverse mode to second order and in forward mode."""
  with jax.enable_x64(True):
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(hw[1]), 3)
    x = jax.random.normal(kx, (2, *hw, c_in), jnp.float64)
    w = jax.random.normal(kw, (3, 3, c_in, 4), jnp.float64)
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mine = lambda x, w: metajax.models.conv2d(x, w, stride=2)
    assert mine(x, w).shape == (2, -(-hw[0] // 2), -(-hw[1] // 2), 4)
    np.testing.assert_allclose(mine(x, w), ref(x, w), rtol=1e-12, atol=1e-12)
    cotangent = jax.random.normal(kc, ref(x, w).shape, jnp.float64)
    second = lambda conv: jax.grad(lambda x, w: sum(
        jnp.sum(jnp.sin(d)) for d in jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * cotangent),
                                              argnums=(0, 1))(x, w)), argnums=(0, 1))(x, w)
    chex.assert_trees_all_close(second(mine), second(ref), rtol=1e-10, atol=1e-10)
    chex.assert_trees_all_close(jax.jvp(mine, (x, w), (w.sum() * x, w))[1], jax.jvp(ref, (x, w), (w.sum() * x, w))[1],
                                rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size,c_in", [(3, 1), (3, 6), (5, 2), (2, 1), (4, 2)])
def test_valid_conv_of_every_impl_and_its_second_derivatives_equal_lax_valid_at_float64(size, c_in):
  """VALID, as the Relation network's first two blocks, for every impl (``"vjp"``: the custom VJP, whose
  input-gradient convolution pads ``size - 1``); values and second-order gradients equal XLA's VALID convolution."""
  with jax.enable_x64(True):
    kx, kw, kc = jax.random.split(jax.random.PRNGKey(size + c_in), 3)
    x = jax.random.normal(kx, (2, 9, 8, c_in), jnp.float64)
    conv = lambda impl: metajax.models.Conv(4, size=size, impl=impl, use_bias=False, padding="VALID")
    w = conv("xla").init(kw, x)["params"]["kernel"]
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    cotangent = jax.random.normal(kc, ref(x, w).shape, jnp.float64)
    second = lambda f: jax.grad(lambda x, w: sum(
        jnp.sum(jnp.sin(d)) for d in jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * cotangent),
                                              argnums=(0, 1))(x, w)), argnums=(0, 1))(x, w)
    assert ref(x, w).shape == (2, 10 - size, 9 - size, 4)
    for impl in ("vjp", "matmul", "xla"):
      mine = lambda x, w: conv(impl).apply({"params": {"kernel": w}}, x)
      np.testing.assert_allclose(mine(x, w), ref(x, w), rtol=1e-12, atol=1e-12, err_msg=impl)
      chex.assert_trees_all_close(second(mine), second(ref), rtol=1e-10, atol=1e-10)
  x = jnp.zeros((2, 9, 8, 1))  # float32, outside the float64 scope
  with pytest.raises(ValueError, match="VALID padding is for stride 1, got stride 2"):
    metajax.models.Conv(4, padding="VALID", stride=2).init(kw, x)
  with pytest.raises(ValueError, match="unknown padding 'valid'"):
    metajax.models.Conv(4, padding="valid").init(kw, x)
  with pytest.raises(ValueError, match="a VALID 3x3 convolution of 2x9 maps leaves nothing"):
    metajax.models.Conv(4, padding="VALID").init(kw, jnp.zeros((1, 2, 9, 1)))


def test_relation_embedding_of_the_paper_leaves_two_blocks_unpadded_for_five_by_five_maps(key, monkeypatch):
  x = jax.random.normal(key, (3, 28, 28, 1))
  embed = metajax.models.Conv4(num_classes=None, width=8, pooled_blocks=2, features="maps", unpadded_blocks=2)
  variables = embed.init(key, x)
  maps = embed.apply(variables, x, mutable=["batch_stats"])[0]
  assert maps.shape == (3, 5, 5, 8)  # 28 -> 26 -> 13 -> 11 -> 5, then two padded blocks (Sung et al.'s code)
  padded = embed.clone(unpadded_blocks=0).apply(variables, x, mutable=["batch_stats"])[0]  # the same parameters
  assert padded.shape == (3, 7, 7, 8)
  module = metajax.models.RelationModule(width=8, hidden=4)
  pairs = jnp.concatenate([maps, maps], axis=-1)
  assert module.init(key, pairs)["params"]["hidden"]["kernel"].shape == (8, 4)  # 5 -> 2 -> 1 spatially
  for bad in (5, True, 2.0):
    with pytest.raises(ValueError, match=f"unpadded_blocks must be an int in \\[0, 4\\], got {bad!r}"):
      embed.clone(unpadded_blocks=bad).init(key, x)
  with pytest.raises(ValueError, match="block 3 leaves 0x0 maps; the input is too small for 4 pooled and 0 unpadded"):
    metajax.models.Conv4(num_classes=5, width=4).init(key, jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="unpadded_blocks needs downsample='max_pool'"):
    embed.clone(downsample="stride").init(key, x)
  registry, made = metajax.learners.registry, []
  monkeypatch.setattr(registry, "Conv4", lambda **options: made.append(options) or metajax.models.Conv4(**options))
  setup = registry.Setup(x_shape=(28, 28, 1), ways=5, width=8, unpadded_blocks=2)
  registry.get("relation").build(setup, key)
  registry.get("protonet").build(setup, key)
  assert [(m["unpadded_blocks"], m.get("pooled_blocks", 4)) for m in made] == [(2, 2), (2, 4)]
  with pytest.raises(ValueError, match="Setup: unpadded_blocks 2 sets Conv4's blocks; x_shape \\(1,\\) is not"):
    metajax.learners.registry.Setup(unpadded_blocks=2)


def test_strided_conv4_halves_by_stride_and_its_impls_agree(key):
  x = jax.random.normal(key, (3, 28, 28, 1))
  strided = metajax.models.Conv4(num_classes=None, width=8, downsample="stride", features="maps", conv_impl="xla")
  variables = strided.init(key, x)
  maps = {impl: strided.clone(conv_impl=impl).apply(variables, x, mutable=["batch_stats"])[0]
          for impl in ("vjp", "matmul", "xla")}
  assert maps["xla"].shape == (3, 2, 2, 8)  # 28 -> 14 -> 7 -> 4 -> 2
  for impl, out in maps.items():
    np.testing.assert_allclose(out, maps["xla"], rtol=1e-4, atol=1e-4, err_msg=impl)
  # The same parameters as the max-pooling Conv4 (only the strides differ), and no pooling.
  pooled = metajax.models.Conv4(num_classes=None, width=8)
  chex.assert_trees_all_equal_shapes(pooled.init(key, x), variables)
  assert "max_pool" not in str(jax.make_jaxpr(lambda v: strided.apply(v, x, mutable=["batch_stats"]))(variables))
  relation_maps = metajax.models.Conv4(num_classes=None, width=8, downsample="stride", pooled_blocks=2, features="maps")
  assert relation_maps.apply(variables, x, mutable=["batch_stats"])[0].shape == (3, 7, 7, 8)


def test_conv4_features_flatten_average_or_keep_the_last_maps(key):
  x = jax.random.normal(key, (3, 28, 28, 1))
  maps_net = metajax.models.Conv4(num_classes=None, width=8, downsample="stride", features="maps")
  variables = maps_net.init(key, x)
  maps = maps_net.apply(variables, x, mutable=["batch_stats"])[0]
  for features, expected in (("flatten", maps.reshape(3, -1)), ("mean", maps.mean(axis=(1, 2)))):
    out = maps_net.clone(features=features).apply(variables, x, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(out, expected, rtol=1e-6, err_msg=features)
  # The head reads 2*2*8 flattened features, or 8 averaged ones (MAML's Omniglot network).
  for features, fan_in in (("flatten", 32), ("mean", 8)):
    head = metajax.models.Conv4(num_classes=5, width=8, downsample="stride", features=features).init(key, x)
    assert head["params"]["head"]["kernel"].shape == (fan_in, 5)
  # Max-pooled 28x28 inputs end at 1x1, where flattening and averaging are the same network.
  pooled = {f: metajax.models.Conv4(num_classes=5, width=8, features=f) for f in ("flatten", "mean")}
  variables = pooled["flatten"].init(key, x)
  np.testing.assert_allclose(*(net.apply(variables, x, mutable=["batch_stats"])[0] for net in pooled.values()),
                             rtol=1e-6)
