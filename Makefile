# The two commands a user needs: `make demo` and `make test`. Both create .venv and
# install what they need; a stamp keyed on setup.cfg makes re-runs skip the install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum setup.cfg | cut -d' ' -f1)
# cpu on these machines; `make install EXTRA=gpu` on a GPU box (see README).
EXTRA ?= cpu
WORKDIR ?= runs/demo
DEMO_FLAGS ?= flags/run/fashion_mnist_demo.flags
PYTEST_ARGS ?=

.PHONY: install test test-slow test-jax demo results bench robustness clean

install: $(STAMP)

$(STAMP): setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRA),test,tfds]"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not jax" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

# The model runs on any Keras backend; this runs its tests on JAX in a separate venv.
test-jax:
	test -x .venv-jax/bin/python || $(PYTHON) -m venv .venv-jax
	.venv-jax/bin/pip install -q --upgrade pip
	.venv-jax/bin/pip install -q "jax[cpu]" "keras>=3.10,<4" numpy pytest
	KERAS_BACKEND=jax .venv-jax/bin/python -m pytest -q -p no:cacheprovider tests/efficientnet -m "not slow"

demo: $(STAMP) fashion-mnist
	$(PY) -m noisy_student.run --flagfile=$(DEMO_FLAGS) --workdir=$(WORKDIR)

# The demo reads Debian's dataset-fashion-mnist package; as root it is installed here
# (as .ci/run does). Otherwise data.make_tfrecords tries the official download and, if
# that fails, its error says what to install.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ ! -d $(FASHION_MNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing dataset-fashion-mnist into $(FASHION_MNIST_DIR)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  echo "could not install dataset-fashion-mnist; the demo will try the download"; \
	fi

# The README's results: each seed of flags/run/$(EXPERIMENT).flags whose report is not yet
# under results/ (hours per seed on 2 cores; resumable: rerun to continue), then the
# table over the seeds. An ablation's workdir starts as a copy of the one-iteration run's
# (runs/fashion_mnist_s<N>) of the same seed, so it reruns only the stages its change
# reaches (report.json's reused_stages names the others); its table adds each seed's
# margin over the run it ablates, $(VERSUS).
EXPERIMENT ?= fashion_mnist
SEEDS ?= 0 1 2
VERSUS ?= $(if $(findstring _ablation_,$(EXPERIMENT)),results/fashion_mnist_2iter)
results: $(STAMP)
	set -e; for s in $(SEEDS); do \
	  r=results/$(EXPERIMENT)/seed$$s; w=runs/$(EXPERIMENT)_s$$s; \
	  test ! -f $$r/report.json || continue; \
	  if [ ! -d $$w ] && [ -d runs/fashion_mnist_s$$s ]; then cp -r runs/fashion_mnist_s$$s $$w; fi; \
	  $(PY) -m noisy_student.run --flagfile=flags/run/$(EXPERIMENT).flags --workdir=$$w \
	    --seed=$$s --results_dir=$$r; \
	done
	$(PY) -m noisy_student.summarize $(foreach s,$(SEEDS),results/$(EXPERIMENT)/seed$(s)) \
	  $(if $(VERSUS),--versus=$(VERSUS))

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-jax .pytest_cache

# Robustness of the final student vs its compute-matched control (labels only, same
# budget) and vs its labels-only teacher, on Fashion-MNIST-C / -P and FGSM / PGD
# (docs/evaluation.md, "Fashion-MNIST robustness"); reads the models of $(WORKDIR). The control is
# normalised by the teacher, the student by its control.
ROBUST_N ?= 1000
robustness: $(STAMP)
	set -e; W=$(WORKDIR); R=$$W/robustness; \
	I=$$(ls -d $$W/iter*/student | sort -V | tail -1 | xargs dirname); \
	C=$$($(PY) -c "from noisy_student.experiment import report; print(report.last_control_dir('$$W') or '')" 2>/dev/null); \
	test -n "$$C" || { echo "no report.json with a control in $$W: run the driver (with --train_controls) to the end"; exit 2; }; \
	test -f $$W/data/fmnist-c/manifest-00000-of-00001.json || $(PY) -m data.make_corrupted \
	    --input_pattern="$$W/data/records/test-*" --output_dir=$$W/data/fmnist-c \
	    --max_examples=$(ROBUST_N); \
	for who in teacher control student; do \
	  case $$who in teacher) m=$$W/iter0/teacher; b=;; control) m=$$C; b=teacher;; \
	    student) m=$$I/student; b=control;; esac; \
	  for suite in clean corruptions perturbations adversarial; do \
	    base=; \
	    if [ -n "$$b" ] && [ $$suite != clean ]; then \
	      base=--baseline_results=$$R/$$b/$$suite/results.json; fi; \
	    $(PY) -c "import sys; from noisy_student.evaluation import outputs; \
	      sys.exit(not outputs.up_to_date(sys.argv[1]))" $$R/$$who/$$suite/results.json \
	      || $(PY) -m noisy_student.evaluate \
	      --model=$$m --suite=$$suite --output_dir=$$R/$$who/$$suite \
	      --eval_pattern="$$W/data/records/test-*" --max_examples=$(ROBUST_N) \
	      --corruption_pattern="$$W/data/fmnist-c/{corruption}/{severity}/*.tfrecord" $$base; \
	  done; \
	done; \
	echo "student: $$I/student, normalised by its control $$C"; \
	cat $$R/student/*/results.md
