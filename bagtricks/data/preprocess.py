"""Per-example image preprocessing as small named ops composed from a spec.

The training pipeline of Bag of Tricks (He et al. 2019, "Bag of Tricks for
Image Classification with Convolutional Neural Networks", §2.1) and the
standard evaluation pipeline are written as strings of ops separated by "|":

  train: "random_resized_crop(224)|flip_lr|color_jitter(0.4, 0.4, 0.4)"
         "|lighting(0.1)|normalize"
  eval:  "resize_short_center_crop(224)|normalize"

`get_preprocess_fn(spec)` parses such a string and returns a function
`fn(image, seed) -> image` that works eagerly and inside `tf.data.Dataset.map`.
All randomness is stateless: every op receives its own seed derived from the
example seed and the op's position in the spec, so the output is a pure
function of (image, seed).

Images are float32 on the 0..255 scale between ops; only `normalize` changes
the scale.
"""

import ast
import math
import numbers
import operator
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

# fn(image, seed) -> image, where seed is a stateless-RNG seed of shape [2].
ImageOp = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
OpFactory = Callable[..., ImageOp]
Size = Union[int, Sequence[int]]

# Per-channel RGB statistics of ImageNet on the 0..255 scale.
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)

# PCA of ImageNet RGB pixel values on the 0..255 scale (AlexNet lighting
# noise, as used by the Bag of Tricks reference code). The columns of
# IMAGENET_EIGVEC are the eigenvectors, IMAGENET_EIGVAL their eigenvalues.
IMAGENET_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# Luma weights (ITU-R BT.601) used for the gray image in saturation jitter.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# RGB <-> YIQ matrices exactly as tabulated in the reference hue jitter
# (MXNet `mx.image.HueJitterAug`). They are rounded, so their product is the
# identity only to about 2e-4.
RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.596, -0.274, -0.321),
    (0.211, -0.523, 0.311),
)
YIQ_TO_RGB = (
    (1.0, 0.956, 0.621),
    (1.0, -0.272, -0.647),
    (1.0, -1.107, 1.705),
)

OPS: Dict[str, OpFactory] = {}


# ----------------------------------------------------------------------------
# Registry and spec parsing.
# ----------------------------------------------------------------------------


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
  """Registers an op factory under `name` for use in preprocessing specs.

  Args:
    name: the op name as written in a spec, e.g. "flip_lr".

  Returns:
    A decorator that stores the factory in `OPS` and returns it unchanged. The
    factory takes the op's parsed spec arguments and returns
    `fn(image, seed) -> image`.
  """

  def decorator(factory: OpFactory) -> OpFactory:
    if name in OPS:
      raise ValueError(f"Preprocessing op '{name}' is already registered.")
    OPS[name] = factory
    return factory

  return decorator


def known_ops() -> List[str]:
  """Returns the sorted names of all registered preprocessing ops."""
  return sorted(OPS)


_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _literal_value(node: ast.AST) -> Any:
  """Evaluates a literal spec argument without `eval`.

  Accepts constants, tuples/lists of literals, a sign, and +-*/ between numbers
  (so that "aspect_min=3/4" can be written as in the paper). Names, calls,
  attributes and everything else are rejected.

  Args:
    node: an expression node of a parsed op argument.

  Returns:
    The Python value of the literal.
  """
  if isinstance(node, ast.Constant):
    return node.value
  if isinstance(node, (ast.Tuple, ast.List)):
    values = [_literal_value(element) for element in node.elts]
    return tuple(values) if isinstance(node, ast.Tuple) else values
  if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS:
    operand = _literal_value(node.operand)
    if isinstance(operand, numbers.Number):
      return _SIGNS[type(node.op)](operand)
  if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
    left, right = _literal_value(node.left), _literal_value(node.right)
    if isinstance(left, numbers.Number) and isinstance(right, numbers.Number):
      return _ARITHMETIC[type(node.op)](left, right)
  raise ValueError(f"not a literal: {ast.unparse(node)!r}")


def _known_ops_message() -> str:
  return "Known ops: " + ", ".join(known_ops()) + "."


def parse_op(op_spec: str) -> Tuple[str, Tuple[Any, ...], Dict[str, Any]]:
  """Parses one op of a spec, "name" or "name(args)", into its parts.

  Args:
    op_spec: e.g. "color_jitter(0.4, saturation=0.2)".

  Returns:
    (name, positional args, keyword args), all arguments Python literals.
  """
  try:
    expression = ast.parse(op_spec.strip(), mode="eval").body
  except SyntaxError as error:
    raise ValueError(
        f"Cannot parse preprocessing op {op_spec!r}: {error.msg}. "
        + _known_ops_message()) from error

  if isinstance(expression, ast.Name):
    return expression.id, (), {}
  if not (isinstance(expression, ast.Call) and
          isinstance(expression.func, ast.Name)):
    raise ValueError(f"Preprocessing op {op_spec!r} must be 'name' or "
                     "'name(args)'. " + _known_ops_message())

  name = expression.func.id
  try:
    args = tuple(_literal_value(arg) for arg in expression.args)
    kwargs = {}
    for keyword in expression.keywords:
      if keyword.arg is None:  # "**kwargs" is not a literal.
        raise ValueError(f"not a literal: {ast.unparse(keyword.value)!r}")
      kwargs[keyword.arg] = _literal_value(keyword.value)
  except ValueError as error:
    raise ValueError(
        f"Bad arguments for preprocessing op '{name}' in {op_spec!r}: "
        f"{error}; only literal arguments are allowed. "
        + _known_ops_message()) from error
  return name, args, kwargs


def build_op(op_spec: str) -> ImageOp:
  """Builds the image function for one op of a spec.

  Args:
    op_spec: e.g. "random_resized_crop(224, area_min=0.25)".

  Returns:
    fn(image, seed) -> image for that op.
  """
  name, args, kwargs = parse_op(op_spec)
  if name not in OPS:
    raise ValueError(f"Unknown preprocessing op '{name}' in {op_spec!r}. "
                     + _known_ops_message())
  try:
    return OPS[name](*args, **kwargs)
  except (TypeError, ValueError) as error:
    raise ValueError(
        f"Bad arguments for preprocessing op '{name}' in {op_spec!r}: "
        f"{error}. " + _known_ops_message()) from error


def get_preprocess_fn(spec: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """Parses a preprocessing spec into ops and composes them.

  Args:
    spec: ops separated by "|", each "name" or "name(args)" with Python
      literal positional/keyword arguments, e.g.
      "random_resized_crop(224)|flip_lr|normalize". Empty entries are ignored.

  Returns:
    fn(image, seed) -> image. `image` is [height, width, channels] uint8
    (0..255) or float already on the 0..255 scale, with 1 or 3 channels;
    height and width may be dynamic. `seed` is an int32/int64 tensor of shape
    [2]. Op number i (from 0) gets the seed `stateless_fold_in(seed, i)`, so
    the output is a pure function of (image, seed). The result is float32, e.g.
    [size, size, channels] after a crop or resize op.
  """
  op_fns = [build_op(op_spec) for op_spec in spec.split("|") if op_spec.strip()]

  def preprocess(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    seed = tf.convert_to_tensor(seed)
    for position, op_fn in enumerate(op_fns):
      # fold_in returns [random key, position] where the key has the dtype of
      # `position`: int64 gives every example 64 random bits rather than 32,
      # so distinct examples practically never share op seeds. Folding in
      # (rather than splitting into len(op_fns) seeds) keeps an op's seed
      # unchanged when ops are appended to the spec.
      op_seed = tf.random.experimental.stateless_fold_in(
          seed, tf.constant(position, tf.int64))
      image = op_fn(image, op_seed)
    return image

  return preprocess


# ----------------------------------------------------------------------------
# Shape helpers.
# ----------------------------------------------------------------------------


def _as_height_width(size: Size) -> Tuple[int, int]:
  """Returns (height, width) from an int or a (height, width) pair."""
  if isinstance(size, numbers.Integral) and not isinstance(size, bool):
    height = width = int(size)
  elif (isinstance(size, (tuple, list)) and len(size) == 2 and
        all(isinstance(s, numbers.Integral) for s in size)):
    height, width = int(size[0]), int(size[1])
  else:
    raise ValueError(f"size must be an int or (height, width), got {size!r}")
  if height <= 0 or width <= 0:
    raise ValueError(f"size must be positive, got {size!r}")
  return height, width


def _num_channels(image: tf.Tensor) -> int:
  """Returns the static channel count of a [height, width, channels] image."""
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ValueError("Expected a [height, width, channels] image with a static "
                     f"channel count of 1 or 3, got shape {image.shape}; use "
                     "tf.ensure_shape to set the channel count.")
  return channels


def _resize_bilinear(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Bilinearly resizes a [h, w, c] image to [height, width, c] float32."""
  # No antialiasing, as in the OpenCV resize of the reference code.
  resized = tf.image.resize(image, (height, width), method="bilinear")
  return tf.cast(resized, tf.float32)


# ----------------------------------------------------------------------------
# Geometric ops.
# ----------------------------------------------------------------------------


@register_op("random_resized_crop")
def random_resized_crop(size: Size,
                        area_min: float = 0.08,
                        area_max: float = 1.0,
                        aspect_min: float = 3 / 4,
                        aspect_max: float = 4 / 3,
                        max_attempts: int = 10) -> ImageOp:
  """Random crop of random area and aspect ratio, resized to `size`.

  Paper (§2.1, step 2): "Randomly crop a rectangular region whose aspect
  ratio is randomly sampled in [3/4, 4/3] and area randomly sampled in
  [8%, 100%], then resize the cropped region into a 224-by-224 square image."

  The box comes from `tf.image.stateless_sample_distorted_bounding_box`. It
  samples the aspect ratio (width / height) uniformly and then an integer
  height, so the area is not exactly uniform; when no valid box is found in
  `max_attempts` tries the whole image is used.

  Args:
    size: output size, an int or (height, width).
    area_min: smallest crop area as a fraction of the image area.
    area_max: largest crop area as a fraction of the image area.
    aspect_min: smallest crop aspect ratio, width / height.
    aspect_max: largest crop aspect ratio, width / height.
    max_attempts: boxes tried before falling back to the whole image.

  Returns:
    fn(image [height, width, channels], seed) -> float32 [size_h, size_w,
    channels].
  """
  out_height, out_width = _as_height_width(size)
  if not 0 < area_min <= area_max <= 1:
    raise ValueError("need 0 < area_min <= area_max <= 1, got "
                     f"{area_min}, {area_max}")
  if not 0 < aspect_min <= aspect_max:
    raise ValueError("need 0 < aspect_min <= aspect_max, got "
                     f"{aspect_min}, {aspect_max}")

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        # 0 so the sampled box need not overlap any reference box; otherwise
        # the default 0.1 would silently raise area_min to 10%.
        min_object_covered=0.0,
        aspect_ratio_range=(aspect_min, aspect_max),
        area_range=(area_min, area_max),
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    # The crop's channel count is lost by the dynamic slice; restore it.
    crop.set_shape([None, None, image.shape[-1]])
    return _resize_bilinear(crop, out_height, out_width)

  return apply


@register_op("flip_lr")
def flip_lr(prob: float = 0.5) -> ImageOp:
  """Horizontal flip with probability `prob`.

  Paper (§2.1, step 3): "Flip horizontally with 0.5 probability."

  Args:
    prob: probability of flipping.

  Returns:
    fn(image [height, width, channels], seed) -> image of the same shape.
  """
  if not 0 <= prob <= 1:
    raise ValueError(f"prob must be in [0, 1], got {prob}")

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    should_flip = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(should_flip, lambda: tf.reverse(image, axis=[1]),
                   lambda: image)

  return apply


@register_op("resize")
def resize(size: Size) -> ImageOp:
  """Bilinear resize to a fixed size, ignoring the aspect ratio.

  Args:
    size: output size, an int or (height, width).

  Returns:
    fn(image [height, width, channels], seed) -> float32 [size_h, size_w,
    channels]; the seed is unused.
  """
  out_height, out_width = _as_height_width(size)

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    del seed  # Deterministic op.
    return _resize_bilinear(image, out_height, out_width)

  return apply


def _center_crop(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Crops the central [height, width] window; offsets round down."""
  image_height, image_width = tf.shape(image)[0], tf.shape(image)[1]
  top = (image_height - height) // 2
  left = (image_width - width) // 2
  # tf.slice fails loudly (instead of returning less) if the window does not
  # fit.
  crop = tf.slice(image, [top, left, 0], [height, width, -1])
  return tf.ensure_shape(crop, [height, width, image.shape[-1]])


@register_op("center_crop")
def center_crop(size: Size) -> ImageOp:
  """Central crop; the image must be at least `size` in both dimensions.

  Args:
    size: crop size, an int or (height, width).

  Returns:
    fn(image [height, width, channels], seed) -> [size_h, size_w, channels];
    the seed is unused.
  """
  crop_height, crop_width = _as_height_width(size)

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    del seed  # Deterministic op.
    return _center_crop(image, crop_height, crop_width)

  return apply


def resize_short_side(image: tf.Tensor, short_side: int) -> tf.Tensor:
  """Bilinearly resizes so the shorter side is `short_side`, keeping aspect.

  Args:
    image: [height, width, channels] image.
    short_side: target length of the shorter side.

  Returns:
    float32 [new_height, new_width, channels] where min(new_height,
    new_width) == short_side and the longer side is scaled by the same factor
    and rounded to the nearest integer.
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = short_side / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  # Guard the shorter side against float rounding, e.g. 255.99997 -> 255.
  new_shape = tf.where(shape == tf.reduce_min(shape), short_side, new_shape)
  resized = tf.image.resize(image, new_shape, method="bilinear")
  return tf.cast(resized, tf.float32)


@register_op("resize_short_center_crop")
def resize_short_center_crop(size: int,
                             crop_fraction: float = 0.875) -> ImageOp:
  """Standard evaluation transform: resize the shorter side, center crop.

  Paper (§2.1, validation): "we resize each image's shorter edge to 256
  pixels while keeping its aspect ratio. Next, we crop out the 224-by-224
  region in the center". 256 = round(224 / 0.875).

  Args:
    size: side of the square output.
    crop_fraction: the crop's side as a fraction of the resized shorter side;
      the shorter side is resized to round(size / crop_fraction).

  Returns:
    fn(image [height, width, channels], seed) -> float32 [size, size,
    channels]; the seed is unused.
  """
  if isinstance(size, bool) or not isinstance(size, numbers.Integral):
    raise ValueError(f"size must be an int, got {size!r}")
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
  short_side = int(round(size / crop_fraction))

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    del seed  # Deterministic op.
    resized = resize_short_side(image, short_side)
    return _center_crop(resized, size, size)

  return apply


# ----------------------------------------------------------------------------
# Colour ops.
# ----------------------------------------------------------------------------


@register_op("to_rgb")
def to_rgb() -> ImageOp:
  """Tiles a 1-channel image to 3 channels; 3-channel images pass through.

  Returns:
    fn(image [height, width, channels], seed) -> [height, width, 3]; the seed
    is unused.
  """

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    del seed  # Deterministic op.
    image = tf.convert_to_tensor(image)
    if _num_channels(image) == 1:
      return tf.tile(image, [1, 1, 3])
    return image

  return apply


def hue_rotation_matrix(hue_angle: tf.Tensor) -> tf.Tensor:
  """RGB -> RGB matrix rotating the chroma (I, Q) plane of YIQ by an angle.

  Matches the reference hue jitter (MXNet `mx.image.HueJitterAug`):
  T_yiq2rgb . [[1, 0, 0], [0, cos, -sin], [0, sin, cos]] . T_rgb2yiq.

  Args:
    hue_angle: scalar rotation angle in radians.

  Returns:
    float32 [3, 3] matrix M; a pixel p (a column vector) maps to M p.
  """
  cos, sin = tf.cos(hue_angle), tf.sin(hue_angle)
  zero, one = tf.zeros_like(cos), tf.ones_like(cos)
  rotation = tf.stack([
      tf.stack([one, zero, zero]),
      tf.stack([zero, cos, -sin]),
      tf.stack([zero, sin, cos]),
  ])
  return (tf.constant(YIQ_TO_RGB, tf.float32) @ rotation @
          tf.constant(RGB_TO_YIQ, tf.float32))


def color_matrix(brightness: tf.Tensor, saturation: tf.Tensor,
                 hue_angle: tf.Tensor) -> tf.Tensor:
  """Single RGB -> RGB matrix for brightness, then saturation, then hue.

  All three reference adjustments are linear in RGB and unclipped between
  steps, so their composition is one 3x3 matrix: hue . saturation .
  brightness, where brightness = b I and saturation = s I + (1 - s) 1 g^T
  with g the gray weights (each channel moves towards the pixel's gray).

  Args:
    brightness: scalar brightness coefficient b.
    saturation: scalar saturation coefficient s.
    hue_angle: scalar hue rotation angle in radians.

  Returns:
    float32 [3, 3] matrix M; a pixel p (a column vector) maps to M p.
  """
  brightness = tf.cast(brightness, tf.float32)
  saturation = tf.cast(saturation, tf.float32)
  hue_angle = tf.cast(hue_angle, tf.float32)
  gray_rows = tf.ones([3, 1]) * tf.constant([GRAY_WEIGHTS], tf.float32)
  saturation_matrix = saturation * tf.eye(3) + (1.0 - saturation) * gray_rows
  return hue_rotation_matrix(hue_angle) @ saturation_matrix * brightness


def adjust_color(image: tf.Tensor, brightness: tf.Tensor,
                 saturation: tf.Tensor, hue_angle: tf.Tensor) -> tf.Tensor:
  """Applies brightness, saturation and hue with explicit coefficients.

  In order, on the 0..255 scale (as the reference MXNet augmenters
  BrightnessJitterAug, SaturationJitterAug, HueJitterAug):
    brightness: x <- b x
    saturation: x <- s x + (1 - s) gray, gray = 0.299 R + 0.587 G + 0.114 B
    hue:        x <- T_yiq2rgb . R(hue_angle) . T_rgb2yiq x
  and the result is clipped to [0, 255]. Saturation and hue are the identity
  on gray, so a 1-channel image only gets the brightness factor.

  Args:
    image: float [height, width, channels] image, channels 1 or 3.
    brightness: scalar brightness coefficient b (1 = unchanged).
    saturation: scalar saturation coefficient s (1 = unchanged).
    hue_angle: scalar hue rotation in radians (0 = unchanged up to the
      rounding of the tabulated YIQ matrices).

  Returns:
    float32 [height, width, channels] image in [0, 255].
  """
  image = tf.cast(image, tf.float32)
  if _num_channels(image) == 1:
    adjusted = image * tf.cast(brightness, tf.float32)
  else:
    matrix = color_matrix(brightness, saturation, hue_angle)
    adjusted = tf.einsum("hwc,dc->hwd", image, matrix)
  return tf.clip_by_value(adjusted, 0.0, 255.0)


@register_op("color_jitter")
def color_jitter(brightness: float = 0.4,
                 saturation: float = 0.4,
                 hue: float = 0.4) -> ImageOp:
  """Random brightness, saturation and hue, in that fixed order.

  Paper (§2.1, step 4): "Scale hue, saturation, and brightness with
  coefficients uniformly drawn from [0.6, 1.4]." As in the reference
  MXNet/GluonCV code:
    brightness coefficient b ~ U[1 - brightness, 1 + brightness],
    saturation coefficient s ~ U[1 - saturation, 1 + saturation],
    hue: the paper's "hue coefficient" is, in the reference code, a rotation
      of the colour in YIQ space by the angle pi * u, u ~ U[-hue, hue].
  See `adjust_color` for the formulas. The result is clipped to [0, 255].
  1-channel images only get the brightness factor.

  Args:
    brightness: half-width of the brightness coefficient's range.
    saturation: half-width of the saturation coefficient's range.
    hue: half-width of the range of u, the hue angle in units of pi.

  Returns:
    fn(image [height, width, channels], seed) -> float32 image of the same
    shape.
  """
  for name, value in [("brightness", brightness), ("saturation", saturation),
                      ("hue", hue)]:
    if not isinstance(value, numbers.Real) or value < 0:
      raise ValueError(f"{name} must be a non-negative number, got {value!r}")

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    brightness_seed, saturation_seed, hue_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    brightness_coefficient = tf.random.stateless_uniform(
        [], brightness_seed, 1.0 - brightness, 1.0 + brightness)
    saturation_coefficient = tf.random.stateless_uniform(
        [], saturation_seed, 1.0 - saturation, 1.0 + saturation)
    hue_angle = math.pi * tf.random.stateless_uniform([], hue_seed, -hue, hue)
    return adjust_color(image, brightness_coefficient, saturation_coefficient,
                        hue_angle)

  return apply


def lighting_offset(alpha: tf.Tensor) -> tf.Tensor:
  """RGB offset V (alpha * lambda) of AlexNet PCA lighting noise.

  Args:
    alpha: [3] weights of the ImageNet RGB principal components.

  Returns:
    float32 [3] offset on the 0..255 scale, added to every pixel.
  """
  eigval = tf.constant(IMAGENET_EIGVAL, tf.float32)
  eigvec = tf.constant(IMAGENET_EIGVEC, tf.float32)
  return tf.linalg.matvec(eigvec, tf.cast(alpha, tf.float32) * eigval)


def adjust_lighting(image: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
  """Adds PCA lighting noise with explicit component weights.

  x <- x + V (alpha * lambda) for every pixel, with the ImageNet eigenvalues
  lambda and eigenvectors V (columns). For a 1-channel image the mean of the
  three RGB offsets is added, i.e. the change in gray level for an equal
  change of R, G and B. No clipping, as in the reference code.

  Args:
    image: float [height, width, channels] image, channels 1 or 3.
    alpha: [3] weights of the principal components.

  Returns:
    float32 [height, width, channels] image.
  """
  offset = lighting_offset(alpha)
  if _num_channels(image) == 1:
    offset = tf.reduce_mean(offset, keepdims=True)
  return tf.cast(image, tf.float32) + offset


@register_op("lighting")
def lighting(alpha_std: float = 0.1) -> ImageOp:
  """AlexNet-style PCA lighting noise.

  Paper (§2.1, step 5): "Add PCA noise with a coefficient sampled from a
  normal distribution N(0, 0.1)": alpha ~ N(0, alpha_std^2)^3 and
  x <- x + V (alpha * lambda); see `adjust_lighting`.

  Args:
    alpha_std: standard deviation of the component weights alpha.

  Returns:
    fn(image [height, width, channels], seed) -> float32 image of the same
    shape.
  """
  if not isinstance(alpha_std, numbers.Real) or alpha_std < 0:
    raise ValueError(f"alpha_std must be a non-negative number, got "
                     f"{alpha_std!r}")

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    alpha = tf.random.stateless_normal([3], seed, stddev=alpha_std)
    return adjust_lighting(image, alpha)

  return apply


@register_op("normalize")
def normalize(mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> ImageOp:
  """Per-channel standardisation (x - mean) / std.

  Paper (§2.1, step 6): "Normalize RGB channels by subtracting 123.68,
  116.779, 103.939 and dividing by 58.393, 57.12, 57.375, respectively."
  A 1-channel image uses the average of the given means and of the stds.

  Args:
    mean: per-channel means, one value or three (RGB), on the 0..255 scale.
    std: per-channel standard deviations, one value or three (RGB).

  Returns:
    fn(image [height, width, channels], seed) -> float32 image of the same
    shape; the seed is unused.
  """
  mean = np.atleast_1d(np.asarray(mean, np.float32))
  std = np.atleast_1d(np.asarray(std, np.float32))
  for name, values in [("mean", mean), ("std", std)]:
    if values.ndim != 1 or values.size not in (1, 3):
      raise ValueError(f"{name} must have 1 or 3 values, got {values}")
  if np.any(std <= 0):
    raise ValueError(f"std must be positive, got {std}")

  def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    del seed  # Deterministic op.
    if _num_channels(image) == 1:
      channel_mean, channel_std = mean.mean(keepdims=True), std.mean(
          keepdims=True)
    else:
      channel_mean = np.broadcast_to(mean, [3])
      channel_std = np.broadcast_to(std, [3])
    return (tf.cast(image, tf.float32) - channel_mean) / channel_std

  return apply
