"""Evaluation: the suites of `noisy_student.evaluate` as plug-ins (after big_vision's
evaluators), and the metrics they share.

  registry.py      suite name -> Suite (suite.py: compute, table, plots, baseline, data)
  clean.py         clean and imagenet_a (top-1 / top-5, masked class subset)
  corruptions.py   ImageNet-C-style errors, CE / mCE
  perturbations.py ImageNet-P-style flip probability, FR / mFR
  adversarial.py   FGSM / PGD accuracy per epsilon (attacks.py: the attacks)
  robustness.py    the metrics: accuracy, CE / mCE, flip rates
  sources.py       TFRecords or class folders as masked NumPy batches
  model.py         the loaded model (Evaluator)
  baselines.py     normalisation by a baseline model, AlexNet or nothing
  outputs.py       results.json, results.md, PNG plots; table cell formats
"""
