"""The test suite. It never reaches a hub: with the hub offline, lm-eval's dataset loading and
transformers go straight to local files instead of retrying unreachable hosts (which, where the
name lookup fails, huggingface_hub does with back-off sleeps: minutes per zero-shot test)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
