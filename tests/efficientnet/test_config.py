"""The architecture table: rounding, variants and the stochastic-depth schedule (no models)."""
import pytest

import efficientnet
from efficientnet import config


@pytest.mark.parametrize("filters,width,expected", [
    (32, 1.0, 32), (32, 1.1, 32), (32, 1.4, 48), (32, 2.0, 64), (32, 4.3, 136),
    (1280, 4.3, 5504), (1280, 1.1, 1408), (16, 0.25, 8), (40, 1.2, 48),
    (24, 0.5, 16),  # 12 rounds to 8 (< 0.9 * 12), so +8.
])
def test_round_filters(filters, width, expected):
  assert config.round_filters(filters, width) == expected


def test_round_repeats_is_ceil():
  assert [config.round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]


def test_variant_table():
  assert efficientnet.VARIANT_NAMES == tuple(
      [f"efficientnet-b{i}" for i in range(9)] + ["efficientnet-l2"])
  b3 = efficientnet.get_variant("efficientnet-b3")
  assert (b3.width, b3.depth, b3.resolution, b3.dropout) == (1.2, 1.4, 300, 0.3)
  assert efficientnet.get_variant("B3") is b3
  l2 = efficientnet.get_variant("l2")
  assert (l2.resolution, l2.train_resolution) == (800, 475)
  with pytest.raises(ValueError, match="unknown EfficientNet variant"):
    efficientnet.get_variant("efficientnet-b9")


def test_l2_shape():
  # The official efficientnet_builder.py at L2's width 4.3 / depth 5.3 gives a 136-filter stem, a 5504-filter head and 88 blocks.
  v = efficientnet.get_variant("l2")
  assert config.round_filters(config.STEM_FILTERS, v.width) == 136
  assert config.round_filters(config.HEAD_FILTERS, v.width) == 5504
  assert len(config.expand_blocks(v.width, v.depth)) == 88


def test_block_names_and_se_width():
  blocks = config.expand_blocks(1.0, 1.0)
  assert [b.name for b in blocks][:4] == ["block1a", "block2a", "block2b", "block3a"]
  assert blocks[-1].name == "block7a"
  # SE width comes from the block *input* filters, not the expanded ones.
  assert blocks[1].se_filters == 4       # block2a: 16 in -> 4.
  assert blocks[2].se_filters == 6       # block2b: 24 in -> 6.
  assert blocks[1].expanded_filters == 96


@pytest.mark.parametrize("name,num_blocks", [
    ("efficientnet-b0", 16), ("efficientnet-b7", 55), ("efficientnet-l2", 88)])
def test_stochastic_depth_schedule(name, num_blocks):
  schedule = efficientnet.stochastic_depth_schedule(name, 0.2)
  assert len(schedule) == num_blocks
  rates = [rate for _, rate, _ in schedule]
  assert rates[0] == 0.0
  # Linear over the *rounded* block count, so it never reaches the maximum.
  assert rates == pytest.approx([0.2 * i / num_blocks for i in range(num_blocks)])
  assert max(rates) < 0.2
  # The first block of every group changes shape; all the others are residual.
  assert [skip for _, _, skip in schedule] == [
      not block_name.endswith("a") for block_name, _, _ in schedule]


def test_b0_residual_blocks():
  schedule = efficientnet.stochastic_depth_schedule("b0")
  residual = [n for n, _, skip in schedule if skip]
  assert residual == ["block2b", "block3b", "block4b", "block4c", "block5b", "block5c",
                      "block6b", "block6c", "block6d"]


def test_small_image_strides():
  strides = {b.name: b.strides for b in config.expand_blocks(1.0, 1.0, small_image=True)}
  assert (strides["block2a"], strides["block3a"], strides["block4a"]) == (1, 1, 2)
