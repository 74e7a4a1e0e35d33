"""FixRes-style fine-tuning freezes the shallow layers of the real EfficientNet."""
import numpy as np
import pytest

import efficientnet
from noisy_student.training import task as task_lib


def _tiny():
  return efficientnet.build_model("efficientnet-b0", num_classes=3, input_shape=(32, 32, 3),
                                  small_image=True, width_coefficient=0.1,
                                  depth_coefficient=0.1)


def test_layers_before_the_prefix_are_frozen():
  model = _tiny()
  frozen = task_lib.freeze_layers_before(model, "block4")
  assert "stem_conv" in frozen and "block3a_project_bn" in frozen
  assert not any(name.startswith(("block4", "top", "predictions")) for name in frozen)
  trainable = {v.path.split("/")[0] for v in model.trainable_variables}
  assert trainable and all(name.startswith(("block4", "block5", "block6", "block7",
                                            "top", "predictions")) for name in trainable)
  # Frozen BN runs in inference mode: training=True no longer changes its output.
  x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
  stem = model.get_layer("stem_bn")
  inputs = np.random.default_rng(1).normal(size=(4, 16, 16, stem.input.shape[-1]))
  np.testing.assert_allclose(stem(inputs, training=True), stem(inputs, training=False))
  assert model(x, training=False).shape == (4, 3)


def test_unknown_prefix_is_a_clear_error():
  with pytest.raises(ValueError, match="freeze_until='block99'"):
    task_lib.freeze_layers_before(_tiny(), "block99")
