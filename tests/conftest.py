"""Shared test set-up: quiet TensorFlow logs and a fixed Keras backend default."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
