"""The evaluation suites of noisy_student.evaluate and the pieces they share.

  sources.py      TFRecords or class folders as masked NumPy batches
  model.py        the loaded model (Evaluator)
  baselines.py    normalisation by a baseline model, AlexNet or nothing
  outputs.py      results.json, results.md, PNG plots; table cell formats
"""
