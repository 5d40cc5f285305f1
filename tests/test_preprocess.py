"""Tests for bagtricks.data.preprocess against NumPy and closed-form references."""

import numpy as np
import pytest
import tensorflow as tf

from bagtricks.data import preprocess

TRAIN_SPEC = ("random_resized_crop(24)|flip_lr|color_jitter(0.4, 0.4, 0.4)"
              "|lighting(0.1)|normalize")
EVAL_SPEC = "resize_short_center_crop(24)|normalize"

# Reference constants written out independently of the module under test.
GRAY = np.array([0.299, 0.587, 0.114])
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.596, -0.274, -0.321],
                       [0.211, -0.523, 0.311]])
YIQ_TO_RGB = np.array([[1.0, 0.956, 0.621],
                       [1.0, -0.272, -0.647],
                       [1.0, -1.107, 1.705]])
EIGVAL = np.array([55.46, 4.794, 1.148])
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                   [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]])
MEAN = np.array([123.68, 116.779, 103.939])
STD = np.array([58.393, 57.12, 57.375])


def make_seed(i, dtype=tf.int32):
  """A stateless seed of shape [2] for example number i."""
  return tf.constant([i, 1234], dtype)


def random_image(height, width, channels=3, seed=0):
  """uint8 [height, width, channels] noise image."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def np_bilinear_resize(image, out_height, out_width):
  """Half-pixel-centre bilinear resize without antialiasing, in NumPy.

  Args:
    image: [height, width, channels] array.
    out_height: output height.
    out_width: output width.

  Returns:
    float64 [out_height, out_width, channels] array.
  """
  image = np.asarray(image, np.float64)

  def source_weights(out_size, in_size):
    source = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    source = np.clip(source, 0, in_size - 1)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, source - lower

  top, bottom, row_weight = source_weights(out_height, image.shape[0])
  left, right, col_weight = source_weights(out_width, image.shape[1])
  rows = (image[top] * (1 - row_weight)[:, None, None] +
          image[bottom] * row_weight[:, None, None])
  return (rows[:, left] * (1 - col_weight)[None, :, None] +
          rows[:, right] * col_weight[None, :, None])


def np_adjust_color(image, brightness, saturation, hue_angle):
  """Brightness, saturation, hue (YIQ rotation) step by step, then clip."""
  x = np.asarray(image, np.float64) * brightness
  gray = x @ GRAY
  x = saturation * x + (1 - saturation) * gray[..., None]
  cos, sin = np.cos(hue_angle), np.sin(hue_angle)
  rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
  hue_matrix = YIQ_TO_RGB @ rotation @ RGB_TO_YIQ
  x = np.einsum("dc,hwc->hwd", hue_matrix, x)
  return np.clip(x, 0, 255)


# ----------------------------------------------------------------------------
# Spec parsing and registry.
# ----------------------------------------------------------------------------


def test_parse_op_positional_keyword_and_arithmetic_literals():
  name, args, kwargs = preprocess.parse_op(
      " random_resized_crop((32, 48), area_min=0.25, aspect_min=3/4, "
      "aspect_max=-(-4/3)) ")
  assert name == "random_resized_crop"
  assert args == ((32, 48),)
  assert kwargs == {"area_min": 0.25, "aspect_min": 0.75,
                    "aspect_max": pytest.approx(4 / 3)}
  assert preprocess.parse_op("flip_lr") == ("flip_lr", (), {})
  assert preprocess.parse_op("normalize(mean=[1, 2, 3])") == (
      "normalize", (), {"mean": [1, 2, 3]})


def test_spec_args_reach_the_op():
  image = random_image(20, 30)
  fn = preprocess.get_preprocess_fn(
      " resize((6, 8)) | | normalize(mean=(1.0, 2.0, 3.0), std=2) ")
  out = fn(image, make_seed(0)).numpy()
  expected = (np_bilinear_resize(image, 6, 8) - [1.0, 2.0, 3.0]) / 2.0
  np.testing.assert_allclose(out, expected, atol=1e-3)


def test_known_ops_lists_every_op():
  assert set(preprocess.known_ops()) == {
      "random_resized_crop", "flip_lr", "color_jitter", "lighting",
      "normalize", "resize_short_center_crop", "resize", "to_rgb",
      "center_crop"}
  assert set(preprocess.OPS) == set(preprocess.known_ops())


def test_unknown_op_raises_and_lists_known_ops():
  with pytest.raises(ValueError) as error:
    preprocess.get_preprocess_fn("flip_lr|no_such_op(3)|normalize")
  message = str(error.value)
  assert "no_such_op" in message
  for name in preprocess.known_ops():
    assert name in message


@pytest.mark.parametrize("spec", [
    "resize(size)",
    "resize(__import__('os').getcwd())",
    "normalize(mean=np.zeros(3))",
    "resize(**{'size': 4})",
    "resize([n for n in range(2)])",
    "resize(2 ** 3)",
])
def test_non_literal_args_are_rejected(spec):
  with pytest.raises(ValueError, match="resize|normalize"):
    preprocess.get_preprocess_fn(spec)


@pytest.mark.parametrize("spec,op_name", [
    ("resize(4, 5, 6)", "resize"),
    ("flip_lr(prob=2.0)", "flip_lr"),
    ("flip_lr(probability=0.5)", "flip_lr"),
    ("resize_short_center_crop(22.5)", "resize_short_center_crop"),
    ("random_resized_crop(8, area_min=0.9, area_max=0.1)",
     "random_resized_crop"),
    ("normalize(mean=(1, 2))", "normalize"),
    ("resize(", "resize"),
    ("os.resize(4)", "os.resize"),
])
def test_bad_arguments_raise_value_error_naming_the_op(spec, op_name):
  with pytest.raises(ValueError) as error:
    preprocess.get_preprocess_fn(spec)
  assert op_name in str(error.value)
  assert "Known ops" in str(error.value)


def test_register_op_adds_an_op_and_refuses_duplicates(monkeypatch):
  monkeypatch.setattr(preprocess, "OPS", dict(preprocess.OPS))

  @preprocess.register_op("add")
  def add(value):  # pylint: disable=unused-variable
    return lambda image, seed: image + value

  fn = preprocess.get_preprocess_fn("add(2)|add(value=3.5)")
  out = fn(np.zeros([2, 2, 1], np.uint8), make_seed(0))
  np.testing.assert_array_equal(out.numpy(), np.full([2, 2, 1], 5.5))
  with pytest.raises(ValueError, match="add"):
    preprocess.register_op("add")(add)


# ----------------------------------------------------------------------------
# Determinism, eagerly and under tf.data.
# ----------------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different_output():
  fn = preprocess.get_preprocess_fn(TRAIN_SPEC)
  image = random_image(40, 32)
  first = fn(image, make_seed(7)).numpy()
  np.testing.assert_array_equal(first, fn(image, make_seed(7)).numpy())
  np.testing.assert_array_equal(
      first, fn(image, make_seed(7, tf.int64)).numpy())
  assert first.dtype == np.float32 and first.shape == (24, 24, 3)
  for other in range(8, 12):
    assert not np.allclose(first, fn(image, make_seed(other)).numpy())


def test_each_op_gets_its_own_seed():
  # With a shared seed two flips would always cancel; independent seeds make
  # "flip_lr|flip_lr" a flip about half of the time.
  fn = preprocess.get_preprocess_fn("flip_lr|flip_lr")
  image = random_image(3, 5)
  flipped = [not np.array_equal(fn(image, make_seed(i)).numpy(), image)
             for i in range(60)]
  assert 10 < sum(flipped) < 50


def test_appending_ops_keeps_the_seeds_of_earlier_ops():
  image = random_image(40, 32)
  crop = preprocess.get_preprocess_fn("random_resized_crop(16)")
  crop_then_more = preprocess.get_preprocess_fn(
      "random_resized_crop(16)|center_crop(16)|lighting(0.0)")
  for i in range(5):
    np.testing.assert_allclose(crop(image, make_seed(i)).numpy(),
                               crop_then_more(image, make_seed(i)).numpy(),
                               atol=1e-4)


def _sizes_dataset(sizes, channels=3):
  """Images of varying (dynamic) height and width, with per-example seeds."""

  def generate():
    for index, (height, width) in enumerate(sizes):
      yield random_image(height, width, channels, seed=index), [index, 99]

  return tf.data.Dataset.from_generator(
      generate,
      output_signature=(
          tf.TensorSpec([None, None, channels], tf.uint8),
          tf.TensorSpec([2], tf.int32),
      ))


def test_tf_data_map_matches_eager_and_repeats():
  sizes = [(40, 32), (31, 57), (64, 64)]
  fn = preprocess.get_preprocess_fn(TRAIN_SPEC)
  dataset = _sizes_dataset(sizes).map(fn)
  assert dataset.element_spec.shape.as_list() == [24, 24, 3]
  first_pass = [x.numpy() for x in dataset]
  second_pass = [x.numpy() for x in dataset]
  for index, (height, width) in enumerate(sizes):
    eager = fn(random_image(height, width, seed=index),
               tf.constant([index, 99])).numpy()
    np.testing.assert_allclose(first_pass[index], eager, atol=1e-5)
    np.testing.assert_array_equal(first_pass[index], second_pass[index])
  assert not np.allclose(first_pass[0][:8, :8], first_pass[2][:8, :8])


@pytest.mark.parametrize("spec,channels,out_channels", [
    (EVAL_SPEC, 3, 3),
    (TRAIN_SPEC, 1, 1),
    ("to_rgb|" + TRAIN_SPEC, 1, 3),
    ("center_crop((20, 10))|resize(12)|to_rgb", 3, 3),
])
def test_all_ops_work_in_tf_data_with_dynamic_shapes(spec, channels,
                                                     out_channels):
  fn = preprocess.get_preprocess_fn(spec)
  dataset = _sizes_dataset([(40, 32), (29, 61)], channels).map(fn)
  outputs = [x.numpy() for x in dataset]
  size = 12 if spec.startswith("center_crop") else 24
  for out in outputs:
    assert out.shape == (size, size, out_channels)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))


# ----------------------------------------------------------------------------
# random_resized_crop.
# ----------------------------------------------------------------------------


def coordinate_image(height, width):
  """float32 image whose channels are (row index, column index, 0)."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)


def recover_crop(out, axis):
  """Recovers (start, length) of the crop along one axis of the output.

  A half-pixel bilinear resize of the linear ramp start..start+length-1 to
  `size` samples gives start + (i + 0.5) * length / size - 0.5 away from the
  clamped borders, so two interior samples determine start and length.

  Args:
    out: [size, size, 3] crop of `coordinate_image`, resized.
    axis: 0 for rows, 1 for columns.

  Returns:
    (start, length) as floats (integers up to float error).
  """
  size = out.shape[axis]
  ramp = out[:, size // 2, 0] if axis == 0 else out[size // 2, :, 1]
  i1, i2 = size // 4, 3 * size // 4
  length = (ramp[i2] - ramp[i1]) * size / (i2 - i1)
  start = ramp[i1] - ((i1 + 0.5) * length / size - 0.5)
  return start, length


@pytest.mark.parametrize("kwargs", [
    {},
    {"area_min": 0.25, "area_max": 0.5, "aspect_min": 0.5, "aspect_max": 2.0,
     "max_attempts": 100},
])
def test_random_resized_crop_area_and_aspect_ranges(kwargs):
  height = width = size = 64
  image = coordinate_image(height, width)
  op = preprocess.random_resized_crop(size, **kwargs)
  area_min = kwargs.get("area_min", 0.08)
  area_max = kwargs.get("area_max", 1.0)
  aspect_min = kwargs.get("aspect_min", 3 / 4)
  aspect_max = kwargs.get("aspect_max", 4 / 3)
  areas, aspects = [], []
  for i in range(120):
    out = op(image, make_seed(i)).numpy()
    assert out.shape == (size, size, 3)
    top, crop_height = recover_crop(out, axis=0)
    left, crop_width = recover_crop(out, axis=1)
    box = np.array([top, crop_height, left, crop_width])
    np.testing.assert_allclose(box, np.round(box), atol=1e-2)
    top, crop_height, left, crop_width = np.round(box).astype(int)
    assert 0 <= top and top + crop_height <= height
    assert 0 <= left and left + crop_width <= width
    # The recovered box explains the whole output, not just the ramp.
    crop = image[top:top + crop_height, left:left + crop_width]
    np.testing.assert_allclose(
        out, np_bilinear_resize(crop, size, size), atol=1e-3)

    areas.append(crop_height * crop_width / (height * width))
    aspects.append(crop_width / crop_height)
    # Width is the rounded product height * aspect: allow half a pixel.
    rounding = 0.5 / crop_height
    assert aspect_min - rounding <= aspects[-1] <= aspect_max + rounding
  assert min(areas) >= area_min - 1e-9 and max(areas) <= area_max + 1e-9
  # The samples cover the ranges rather than sitting at one value.
  assert min(areas) < area_min + 0.25 * (area_max - area_min)
  assert max(areas) > area_max - 0.25 * (area_max - area_min)
  assert min(aspects) < 1.0 < max(aspects)


def test_random_resized_crop_of_whole_image_is_plain_resize():
  image = random_image(48, 40)
  op = preprocess.random_resized_crop((32, 36), area_min=1.0, area_max=1.0)
  for i in range(3):
    out = op(image, make_seed(i)).numpy()
    np.testing.assert_allclose(out, np_bilinear_resize(image, 32, 36),
                               atol=1e-3)


def test_random_resized_crop_shapes():
  op = preprocess.random_resized_crop(24)
  assert op(random_image(50, 30), make_seed(0)).shape == (24, 24, 3)
  assert op(random_image(30, 50, 1), make_seed(0)).shape == (24, 24, 1)
  op = preprocess.random_resized_crop([16, 20])
  assert op(random_image(50, 30), make_seed(0)).shape == (16, 20, 3)


# ----------------------------------------------------------------------------
# flip_lr.
# ----------------------------------------------------------------------------


def test_flip_lr_flips_about_half_the_time():
  image = random_image(4, 6)
  op = preprocess.flip_lr()
  flips = 0
  for i in range(400):
    out = op(tf.constant(image, tf.float32), make_seed(i)).numpy()
    if np.array_equal(out, np.fliplr(image)):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image)
  # Binomial(400, 0.5) has standard deviation 10.
  assert 160 <= flips <= 240


@pytest.mark.parametrize("prob,expected_flips", [(0.0, 0), (1.0, 20)])
def test_flip_lr_extreme_probabilities(prob, expected_flips):
  image = random_image(4, 6)
  op = preprocess.flip_lr(prob)
  flips = sum(np.array_equal(op(image, make_seed(i)).numpy(), np.fliplr(image))
              for i in range(20))
  assert flips == expected_flips


# ----------------------------------------------------------------------------
# Colour: adjust_color and color_jitter.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("brightness,saturation,hue_angle", [
    (1.3, 1.0, 0.0),
    (1.0, 0.6, 0.0),
    (1.0, 1.4, 0.0),
    (1.0, 1.0, 0.9),
    (0.7, 1.25, -1.1),
    (1.4, 0.6, np.pi * 0.4),
])
def test_adjust_color_matches_numpy(brightness, saturation, hue_angle):
  image = random_image(6, 7).astype(np.float32)
  out = preprocess.adjust_color(image, brightness, saturation, hue_angle)
  expected = np_adjust_color(image, brightness, saturation, hue_angle)
  np.testing.assert_allclose(out.numpy(), expected, atol=1e-2)
  assert out.numpy().min() >= 0 and out.numpy().max() <= 255


def test_adjust_color_neutral_coefficients_are_identity():
  image = random_image(6, 7).astype(np.float32)
  out = preprocess.adjust_color(image, 1.0, 1.0, 0.0).numpy()
  # Exact up to the rounding of the tabulated YIQ matrices (< 1 level).
  np.testing.assert_allclose(out, image, atol=1.0)
  # Without the hue rotation it is exact to float error.
  matrix = preprocess.color_matrix(1.0, 1.0, 0.0).numpy()
  np.testing.assert_allclose(matrix, YIQ_TO_RGB @ RGB_TO_YIQ, atol=1e-6)


def test_adjust_color_on_grayscale_is_brightness_only():
  image = random_image(6, 7, channels=1).astype(np.float32)
  out = preprocess.adjust_color(image, 1.3, 0.5, 1.0).numpy()
  np.testing.assert_allclose(out, np.clip(image * 1.3, 0, 255), atol=1e-4)


def test_color_jitter_brightness_coefficient_is_uniform_in_range():
  # On a 1-channel image only brightness acts, so out / in is the coefficient.
  image = np.full([2, 2, 1], 100, np.uint8)
  op = preprocess.color_jitter(0.4, 0.4, 0.4)
  coefficients = np.array(
      [op(tf.cast(image, tf.float32), make_seed(i)).numpy()[0, 0, 0] / 100
       for i in range(300)])
  assert coefficients.min() >= 0.6 - 1e-6 and coefficients.max() <= 1.4 + 1e-6
  assert coefficients.min() < 0.65 and coefficients.max() > 1.35
  # U[0.6, 1.4] has mean 1 and standard deviation 0.8 / sqrt(12) = 0.231.
  assert abs(coefficients.mean() - 1.0) < 0.05
  assert abs(coefficients.std() - 0.231) < 0.03


def test_color_jitter_without_jitter_is_neutral():
  image = random_image(5, 5).astype(np.float32)
  out = preprocess.color_jitter(0.0, 0.0, 0.0)(image, make_seed(3)).numpy()
  np.testing.assert_allclose(out, np_adjust_color(image, 1.0, 1.0, 0.0),
                             atol=1e-2)


# ----------------------------------------------------------------------------
# lighting.
# ----------------------------------------------------------------------------


def test_adjust_lighting_matches_numpy():
  image = random_image(5, 4).astype(np.float32)
  alpha = np.array([0.1, -0.2, 0.05])
  out = preprocess.adjust_lighting(image, alpha).numpy()
  offset = EIGVEC @ (alpha * EIGVAL)
  np.testing.assert_allclose(out, image + offset, atol=1e-3)

  gray = random_image(5, 4, channels=1).astype(np.float32)
  out = preprocess.adjust_lighting(gray, alpha).numpy()
  np.testing.assert_allclose(out, gray + offset.mean(), atol=1e-3)


def test_lighting_alpha_has_requested_std():
  op = preprocess.lighting(0.1)
  zeros = np.zeros([1, 1, 3], np.float32)
  offsets = np.stack(
      [op(zeros, make_seed(i)).numpy()[0, 0] for i in range(300)])
  alphas = np.linalg.solve(EIGVEC, offsets.T).T / EIGVAL
  assert np.all(np.abs(alphas.mean(0)) < 0.025)
  np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.15)
  # Components are drawn independently.
  assert abs(np.corrcoef(alphas.T)[0, 1]) < 0.2


# ----------------------------------------------------------------------------
# normalize, resize, crops, to_rgb.
# ----------------------------------------------------------------------------


def test_normalize_rgb_and_grayscale():
  op = preprocess.normalize()
  image = random_image(3, 4)
  np.testing.assert_allclose(op(image, make_seed(0)).numpy(),
                             (image - MEAN) / STD, atol=1e-5)
  gray = random_image(3, 4, channels=1)
  np.testing.assert_allclose(op(gray, make_seed(0)).numpy(),
                             (gray - MEAN.mean()) / STD.mean(), atol=1e-5)


def test_normalize_via_spec_casts_uint8_and_returns_float32():
  image = random_image(3, 4)
  out = preprocess.get_preprocess_fn("normalize")(image, make_seed(0))
  assert out.dtype == tf.float32
  np.testing.assert_allclose(out.numpy(), (image - MEAN) / STD, atol=1e-5)


def linear_image(height, width):
  """float32 [height, width, 3] image, each channel a linear ramp."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows * 2.0 + cols * 0.5, rows * 0.25, cols * 3.0 + 1.0],
                  -1).astype(np.float32)


def linear_image_at(rows, cols):
  """The values of `linear_image` at fractional (rows, cols)."""
  rows, cols = np.meshgrid(rows, cols, indexing="ij")
  return np.stack([rows * 2.0 + cols * 0.5, rows * 0.25, cols * 3.0 + 1.0], -1)


@pytest.mark.parametrize("height,width", [(70, 50), (50, 70), (61, 47),
                                          (40, 40)])
def test_resize_short_center_crop_matches_closed_form(height, width):
  size, crop_fraction = 32, 0.8
  short_side = 40  # round(32 / 0.8)
  scale = short_side / min(height, width)
  new_height, new_width = round(height * scale), round(width * scale)
  assert min(new_height, new_width) == short_side
  top, left = (new_height - size) // 2, (new_width - size) // 2
  # Half-pixel-centre bilinear resize of a linear image is the image at the
  # source coordinates; the centre crop stays away from clamped borders.
  source_rows = (np.arange(top, top + size) + 0.5) * height / new_height - 0.5
  source_cols = (np.arange(left, left + size) + 0.5) * width / new_width - 0.5
  expected = linear_image_at(source_rows, source_cols)

  op = preprocess.resize_short_center_crop(size, crop_fraction)
  out = op(linear_image(height, width), make_seed(0)).numpy()
  assert out.shape == (size, size, 3)
  np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("height,width", [(300, 200), (200, 300)])
def test_resize_short_center_crop_standard_eval_shape(height, width):
  # 224 / 0.875 = 256: the paper's evaluation transform.
  op = preprocess.resize_short_center_crop(224)
  out = op(random_image(height, width), make_seed(0)).numpy()
  assert out.shape == (224, 224, 3)
  long_side = 384
  resized = np_bilinear_resize(
      random_image(height, width),
      *((long_side, 256) if height > width else (256, long_side)))
  top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
  np.testing.assert_allclose(out, resized[top:top + 224, left:left + 224],
                             atol=1e-2)


def test_resize_matches_numpy():
  image = random_image(13, 9)
  out = preprocess.resize((7, 17))(image, make_seed(0)).numpy()
  np.testing.assert_allclose(out, np_bilinear_resize(image, 7, 17), atol=1e-3)
  assert preprocess.resize(5)(image, make_seed(0)).shape == (5, 5, 3)


def test_center_crop_matches_slicing():
  image = random_image(11, 8)
  out = preprocess.center_crop(4)(image, make_seed(0)).numpy()
  np.testing.assert_array_equal(out, image[3:7, 2:6])
  out = preprocess.center_crop((11, 3))(image, make_seed(0)).numpy()
  np.testing.assert_array_equal(out, image[:, 2:5])


def test_center_crop_larger_than_image_fails():
  with pytest.raises(tf.errors.InvalidArgumentError):
    preprocess.center_crop(9)(random_image(8, 20), make_seed(0))


def test_to_rgb():
  gray = random_image(3, 4, channels=1)
  op = preprocess.to_rgb()
  np.testing.assert_array_equal(op(gray, make_seed(0)).numpy(),
                                np.repeat(gray, 3, axis=-1))
  rgb = random_image(3, 4)
  np.testing.assert_array_equal(op(rgb, make_seed(0)).numpy(), rgb)
