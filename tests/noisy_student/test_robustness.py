"""Robustness metrics pinned on hand-computed examples."""
import uuid

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.evaluation import robustness as rb


def test_alexnet_table_scores_100():
  errors = {c: {s: e for s in rb.SEVERITIES} for c, e in rb.ALEXNET_CORRUPTION_ERRORS.items()}
  out = rb.corruption_summary(errors, rb.ALEXNET_CORRUPTION_ERRORS,
                              clean_error=rb.ALEXNET_CLEAN_ERROR,
                              baseline_clean_error=rb.ALEXNET_CLEAN_ERROR)
  assert len(out["ce"]) == 15
  assert out["mce"] == pytest.approx(100.0)
  assert out["relative_mce"] == pytest.approx(100.0)
  assert all(v == pytest.approx(100.0) for v in out["ce"].values())


def test_mce_and_relative_mce_by_hand():
  errors = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.5, 2: 0.5}}
  # JSON-loaded baselines have string severity keys and may hold extra severities.
  base = {"a": {"1": 0.4, "2": 0.6, "3": 0.9}, "b": {"1": 0.5, "2": 0.75}}
  out = rb.corruption_summary(errors, base, clean_error=0.1, baseline_clean_error=0.3)
  # a: (0.2+0.4)/(0.4+0.6) = 60; b: 1.0/1.25 = 80.
  assert out["ce"] == pytest.approx({"a": 60.0, "b": 80.0})
  assert out["mce"] == pytest.approx(70.0)
  # a: (0.3-0.1)/(0.5-0.3) = 100; b: (0.5-0.1)/(0.625-0.3) = 123.08.
  assert out["relative_ce"] == pytest.approx({"a": 100.0, "b": 0.4 / 0.325 * 100})
  assert out["relative_mce"] == pytest.approx((100.0 + 0.4 / 0.325 * 100) / 2)


def test_mce_without_clean_errors_has_no_relative():
  out = rb.corruption_summary({"fog": {s: 0.5 for s in rb.SEVERITIES}}, rb.ALEXNET_CORRUPTION_ERRORS)
  assert "relative_mce" not in out
  assert out["mce"] == pytest.approx(100 * 0.5 / 0.819324)


def test_mce_skips_corruptions_the_baseline_never_gets_wrong():
  out = rb.corruption_summary({"a": {1: 0.2}, "b": {1: 0.1}}, {"a": {1: 0.4}, "b": {1: 0.0}},
                              clean_error=0.0, baseline_clean_error=0.0)
  assert out["ce"]["a"] == pytest.approx(50.0) and np.isnan(out["ce"]["b"])
  assert out["mce"] == pytest.approx(50.0) and out["unnormalised"] == ["b"]
  assert out["relative_mce"] == pytest.approx(50.0)
  assert out["relative_unnormalised"] == ["b"]


def test_mce_rejects_mismatched_severities_and_missing_baseline():
  with pytest.raises(ValueError, match="severities 1-5"):
    rb.corruption_summary({"fog": {1: 0.5}}, rb.ALEXNET_CORRUPTION_ERRORS)
  with pytest.raises(ValueError, match="severities"):
    rb.corruption_summary({"a": {1: 0.5, 4: 0.5}}, {"a": {1: 0.5, 2: 0.5}})
  with pytest.raises(ValueError, match="no baseline"):
    rb.corruption_summary({"rain": {1: 0.5}}, {"a": {1: 0.5}})


# [0,1,0,1]: vs first frame 2 flips, vs previous 3; [0,1,1,1]: vs first 3, vs previous 1.
TOY = np.array([[0, 1, 0, 1], [0, 1, 1, 1]])


def test_flip_probability_noise_rule_compares_with_first_frame():
  assert rb.flip_probability(TOY, noise=True) == pytest.approx(5 / 6)


def test_flip_probability_other_rule_compares_with_previous_frame():
  assert rb.flip_probability(TOY, noise=False) == pytest.approx(4 / 6)


def test_flip_probability_constant_sequences_is_zero():
  assert rb.flip_probability(np.full((3, 5), 7), noise=False) == 0.0
  with pytest.raises(ValueError):
    rb.flip_probability(np.zeros((3, 1)), noise=True)


def test_noise_perturbations_are_classified():
  assert rb.is_noise_perturbation("gaussian_noise")
  assert rb.is_noise_perturbation("shot_noise")
  assert not rb.is_noise_perturbation("translate")
  assert not rb.is_noise_perturbation("brightness")


@pytest.mark.parametrize("other, expected", [
    ([0, 1, 2, 3, 4], 0),
    ([1, 0, 2, 3, 4], 2),           # swap of the first two: |0-1| + |1-0|
    ([4, 3, 2, 1, 0], 12),          # reversed: 4 + 2 + 0 + 2 + 4
    ([5, 6, 7, 8, 9], 15),          # disjoint: all at position >= 5
    ([9, 0, 1, 2, 3], 5),           # 0..3 each one place down, 4 out of the top 5 (+1)
])
def test_top5_distance(other, expected):
  assert rb.top5_distance(np.array([0, 1, 2, 3, 4]), np.array(other)) == expected


def test_top5_distance_mean_uses_the_same_frame_rule():
  a, b = [0, 1, 2, 3, 4], [1, 0, 2, 3, 4]
  seq = np.array([[a, b, b]])  # one sequence of three frames
  assert rb.top5_distance_mean(seq, noise=False) == pytest.approx((2 + 0) / 2)
  assert rb.top5_distance_mean(seq, noise=True) == pytest.approx((2 + 2) / 2)


def test_flip_rate_summary():
  out = rb.flip_rate_summary({"translate": 0.02, "rotate": 0.05, "scale": 0.1},
                             {"translate": 0.04, "rotate": 0.05, "scale": 0.0})
  assert out["fr"] == pytest.approx({"translate": 50.0, "rotate": 100.0})
  assert out["mfr"] == pytest.approx(75.0)
  assert out["unnormalised"] == ["scale"]


def test_subset_mask_takes_argmax_among_subset():
  logits = np.array([[9.0, 1.0, 2.0, 0.5, 100.0],
                     [0.0, 3.0, 1.0, 5.0, 0.0]])
  subset = [1, 2, 3]
  masked = rb.mask_logits(logits, subset)
  # class 0 and 4 (big logits outside the subset) are ignored.
  assert rb.top_k_predictions(masked, 1)[:, 0].tolist() == [2, 3]
  assert rb.top_k_predictions(masked, 5).shape == (2, 5)
  assert set(rb.top_k_predictions(masked, 3)[0]) == {1, 2, 3}
  meter = rb.AccuracyMeter(5)
  meter.update(masked, [2, 1])
  assert meter.result() == pytest.approx({"count": 2, "top1": 0.5, "top5": 1.0})


def test_subset_mask_rejects_out_of_range_indices():
  with pytest.raises(ValueError):
    rb.mask_logits(np.zeros((1, 3)), [1, 3])


def test_parse_class_subset(tmp_path):
  assert rb.parse_class_subset("imagenet_a") == rb.IMAGENET_A_INDICES
  assert len(rb.IMAGENET_A_INDICES) == 200 and rb.IMAGENET_A_INDICES[:3] == (6, 11, 13)
  assert rb.parse_class_subset("5, 1,3") == (1, 3, 5)
  path = tmp_path / "subset.txt"
  path.write_text("# my classes\n4 2\n7,2\n")
  assert rb.parse_class_subset(str(path)) == (2, 4, 7)
  remote = f"ram://subset-{uuid.uuid4().hex[:8]}.txt"  # A stand-in for gs://.
  tf.io.gfile.copy(str(path), remote)
  assert rb.parse_class_subset(remote) == (2, 4, 7)
  tf.io.gfile.remove(remote)
  with pytest.raises(ValueError):
    rb.parse_class_subset(" ")


def test_accuracy_meter_masks_padding_and_counts_per_class():
  logits = np.eye(3)[[0, 1, 2, 0]] + 0.1 * np.arange(3)  # predicts 0, 1, 2, 0
  meter = rb.AccuracyMeter(3, top_k=(1, 2))
  top1 = meter.update(logits, [0, 2, 2, 1], mask=[1, 1, 1, 0])  # last row is padding
  assert top1.tolist() == [True, False, True, False]
  res = meter.result()
  assert res["count"] == 3 and res["top1"] == pytest.approx(2 / 3)
  assert meter.per_class() == {0: 1.0, 2: 0.5}
  # top-k with k >= num_classes counts everything.
  assert res["top2"] <= 1.0
  big = rb.AccuracyMeter(3, top_k=(1, 5))
  big.update(logits, [0, 2, 2, 1])
  assert big.result()["top5"] == 1.0


def test_records_without_ids_get_distinct_sequence_seeds():
  """A record's id seeds its perturbation sequence; records without one are numbered by
  their position among the scored records, so they do not all share one seed."""
  import tensorflow as tf

  from data.robustness import perturbations as P
  from noisy_student.evaluation import perturbations
  ids = perturbations.sequence_ids(np.array([b"a", b"", b""], dtype=object), 5)
  assert list(ids) == [b"a", b"#6", b"#7"]
  seeds = {tuple(P.image_seed(tf.constant(i), 0).numpy()) for i in ids}
  assert len(seeds) == 3
  # Positions count the scored rows over all batches (an invalid row takes none).
  batch = lambda ids, valid: {"image": np.zeros([len(ids), 1]), "label": np.zeros(len(ids)),
                              "id": np.array(ids, dtype=object), "valid": np.array(valid)}
  rows = perturbations.scored_rows([batch([b"", b"x", b""], [True, True, False]),
                                    batch([b"", b""], [True, True])])
  assert [list(ids) for _, ids, _ in rows] == [[b"#0", b"x"], [b"#2", b"#3"]]


def test_a_baseline_with_a_null_number_is_refused_naming_file_and_field(tmp_path):
  import json

  from noisy_student.evaluation import baselines
  path = tmp_path / "results.json"
  results = {"suite": "perturbations", "flip_probability": {"rotate": 0.1, "tilt": None},
             "top5_distance": {"rotate": 0.2, "tilt": 0.3}}
  path.write_text(json.dumps(results))
  check = lambda suite, names=None: baselines.check_numbers(
      baselines.load_baseline(str(path), suite), str(path), suite, names)
  with pytest.raises(ValueError, match=r"results.json has no number for "
                     r"flip_probability.tilt \(null\)"):
    check("perturbations")
  # Only what this run evaluates must be there.
  check("perturbations", ["rotate"])
  with pytest.raises(ValueError, match=r"flip_probability.scale \(missing\)"):
    check("perturbations", ["rotate", "scale"])
  results["flip_probability"]["tilt"] = 0.0
  path.write_text(json.dumps(results))
  check("perturbations")
  path.write_text(json.dumps({"suite": "corruptions", "errors": {"fog": {"1": None}}}))
  with pytest.raises(ValueError, match=r"errors.fog.1"):
    check("corruptions")


def test_make_robustness_redoes_only_missing_or_outdated_suites(tmp_path):
  """`make robustness` skips a suite whose results.json is up to date: present and, for
  perturbations, made on this code's sequences (results without a version are v1)."""
  import json

  from data.robustness import perturbations as P
  from noisy_student.evaluation import outputs
  path = tmp_path / "results.json"
  assert not outputs.up_to_date(str(path))
  path.write_text(json.dumps({"suite": "clean", "top1": 0.9}))
  assert outputs.up_to_date(str(path))
  path.write_text(json.dumps({"suite": "perturbations"}))
  assert not outputs.up_to_date(str(path))
  path.write_text(json.dumps({"suite": "perturbations", "sequences": P.SEQUENCES_VERSION}))
  assert outputs.up_to_date(str(path))
