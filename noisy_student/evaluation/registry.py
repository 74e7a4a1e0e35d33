"""The evaluation suites by name: adding a suite is one module and one line here.

The order is the order of --suite's choices.
"""

from __future__ import annotations

from noisy_student.evaluation import adversarial
from noisy_student.evaluation import clean
from noisy_student.evaluation import corruptions
from noisy_student.evaluation import perturbations
from noisy_student.evaluation import suite as suite_lib

SUITES: dict[str, suite_lib.Suite] = {
    "clean": clean.CLEAN,
    "imagenet_a": clean.IMAGENET_A,
    "corruptions": corruptions.CORRUPTIONS,
    "perturbations": perturbations.PERTURBATIONS,
    "adversarial": adversarial.ADVERSARIAL,
}
