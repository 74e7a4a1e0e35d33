"""The EfficientNet family as data: block specs, the variant table and their expansion.

EfficientNet (Tan & Le, 2019) scales one base network (B0) in width and depth; Noisy
Student (Xie et al., 2020, Sec. 3.1 and Table 7) adds the wider and deeper L2. Everything
the builder needs is computed here, in plain Python, so the stochastic-depth schedule and
the layer names can be tested without building a model:

  * `BASE_BLOCKS`: the seven MBConv block groups of B0 (repeats, kernel, stride, ...).
  * `VARIANTS`: width / depth coefficients, resolution and head dropout per variant.
  * `expand_blocks`: the per-block list after width and depth rounding, with the
    stochastic-depth rate of every block computed from the *rounded* block count.
"""

from __future__ import annotations

import dataclasses
import math
import string

# The ImageNet mean / standard deviation of RGB pixels in [0, 255] (the pipelines hand
# the model [0, 255] pixels; the model's first layer normalises with these).
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
DEPTH_DIVISOR = 8
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One group of identical MBConv blocks of the base network (B0)."""
  repeats: int
  kernel_size: int
  strides: int
  expand_ratio: int
  filters_in: int
  filters_out: int
  se_ratio: float


# (repeats, kernel, stride, expand, in, out, se) as in the official `blocks_args`.
BASE_BLOCKS = (
    BlockSpec(1, 3, 1, 1, 32, 16, 0.25),
    BlockSpec(2, 3, 2, 6, 16, 24, 0.25),
    BlockSpec(2, 5, 2, 6, 24, 40, 0.25),
    BlockSpec(3, 3, 2, 6, 40, 80, 0.25),
    BlockSpec(3, 5, 1, 6, 80, 112, 0.25),
    BlockSpec(4, 5, 2, 6, 112, 192, 0.25),
    BlockSpec(1, 3, 1, 6, 192, 320, 0.25),
)

# The official small-image model (SVHN / CIFAR, 32x32): the 2nd and 3rd block groups
# keep stride 1, so a 32x32 input ends in a 4x4 feature map instead of 1x1.
SMALL_IMAGE_STRIDE1_GROUPS = (1, 2)


@dataclasses.dataclass(frozen=True)
class Variant:
  """Scaling coefficients of one family member.

  Attributes:
    name: canonical name, e.g. "efficientnet-b0".
    width: channel multiplier (before rounding to multiples of 8).
    depth: repeat multiplier (rounded up per block group).
    resolution: the default (evaluation) input size.
    dropout: head dropout rate before the final dense layer.
    train_resolution: the training input size (differs only for L2).
  """
  name: str
  width: float
  depth: float
  resolution: int
  dropout: float
  train_resolution: int = 0

  def __post_init__(self):
    if not self.train_resolution:
      object.__setattr__(self, "train_resolution", self.resolution)


VARIANTS = {v.name: v for v in (
    Variant("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    Variant("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    Variant("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    Variant("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    Variant("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    Variant("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    Variant("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    Variant("efficientnet-b7", 2.0, 3.1, 600, 0.5),
    Variant("efficientnet-b8", 2.2, 3.6, 672, 0.5),
    # Noisy Student paper, Table 7: trained at 475, evaluated at 800.
    Variant("efficientnet-l2", 4.3, 5.3, 800, 0.5, train_resolution=475),
)}
VARIANT_NAMES = tuple(VARIANTS)


def get_variant(name: str) -> Variant:
  """The variant for "efficientnet-b3" (or the short form "b3")."""
  key = name.lower()
  if not key.startswith("efficientnet-"):
    key = "efficientnet-" + key
  if key not in VARIANTS:
    raise ValueError(f"unknown EfficientNet variant {name!r}; known: {', '.join(VARIANT_NAMES)}")
  return VARIANTS[key]


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
  """Scales a channel count by `width` and rounds it to a multiple of `divisor`.

  Rounds to nearest, but never more than 10% below the scaled value (official rule).
  """
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class Block:
  """One MBConv block of a concrete network, after rounding.

  Attributes:
    name: layer-name prefix, "block{group}{letter}" as in keras.applications
      ("block2b" is the second block of the second group).
    index: position among all blocks of the network, from 0.
    filters_in, filters_out, kernel_size, strides, expand_ratio: the block's shape.
    se_filters: squeeze-and-excitation width, from the block *input* filters.
    drop_rate: stochastic-depth rate `max_rate * index / num_blocks`; only applied
      where `has_identity_skip`.
    has_identity_skip: stride 1 and filters_in == filters_out (a residual block).
  """
  name: str
  index: int
  filters_in: int
  filters_out: int
  kernel_size: int
  strides: int
  expand_ratio: int
  se_filters: int
  drop_rate: float
  has_identity_skip: bool

  @property
  def expanded_filters(self) -> int:
    return self.filters_in * self.expand_ratio


def _letters(j: int) -> str:
  """0 -> "a", 25 -> "z", 26 -> "aa" (L2-sized groups stay below 26, but be safe)."""
  out = ""
  j += 1
  while j:
    j, r = divmod(j - 1, 26)
    out = string.ascii_lowercase[r] + out
  return out


def expand_blocks(width: float, depth: float, stochastic_depth_rate: float = 0.2,
                  small_image: bool = False,
                  base_blocks: tuple[BlockSpec, ...] = BASE_BLOCKS) -> list[Block]:
  """The rounded per-block list of a network; the builder only loops over it.

  The stochastic-depth denominator is the number of blocks *after* depth rounding, so
  the rate rises linearly from 0 (first block) and never reaches `stochastic_depth_rate`.
  """
  groups = []
  for g, spec in enumerate(base_blocks):
    strides = 1 if small_image and g in SMALL_IMAGE_STRIDE1_GROUPS else spec.strides
    groups.append((spec, round_repeats(spec.repeats, depth), strides))
  num_blocks = sum(repeats for _, repeats, _ in groups)
  blocks = []
  for g, (spec, repeats, group_strides) in enumerate(groups):
    group_in = round_filters(spec.filters_in, width)
    filters_out = round_filters(spec.filters_out, width)
    for j in range(repeats):
      # Only the first block of a group changes resolution and channel count.
      filters_in = group_in if j == 0 else filters_out
      strides = group_strides if j == 0 else 1
      index = len(blocks)
      blocks.append(Block(
          name=f"block{g + 1}{_letters(j)}",
          index=index,
          filters_in=filters_in,
          filters_out=filters_out,
          kernel_size=spec.kernel_size,
          strides=strides,
          expand_ratio=spec.expand_ratio,
          se_filters=max(1, int(filters_in * spec.se_ratio)),
          drop_rate=stochastic_depth_rate * index / num_blocks,
          has_identity_skip=strides == 1 and filters_in == filters_out,
      ))
  return blocks


def stochastic_depth_schedule(name: str, stochastic_depth_rate: float = 0.2, *,
                              depth_coefficient: float | None = None,
                              width_coefficient: float | None = None,
                              small_image: bool = False) -> list[tuple[str, float, bool]]:
  """[(block_name, drop_rate, has_identity_skip)] for every block of a variant.

  `drop_rate` is the scheduled rate; the model applies it only where
  `has_identity_skip` is True (other blocks have no residual to fall back to).
  """
  variant = get_variant(name)
  blocks = expand_blocks(
      variant.width if width_coefficient is None else width_coefficient,
      variant.depth if depth_coefficient is None else depth_coefficient,
      stochastic_depth_rate, small_image)
  return [(b.name, b.drop_rate, b.has_identity_skip) for b in blocks]
