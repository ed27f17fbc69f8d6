"""Shared fixtures. Ultralytics must not download or pip-install at run time; torch hub must not find a cache."""

import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="xprune-test-yolo-"))
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="xprune-test-torch-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A tiny synthetic COCO-format dataset (128 px)."""
    from xprune.data.synth import SynthConfig, generate
    return generate(tmp_path_factory.mktemp("synth") / "data", SynthConfig(image_size=128, train=8, val=8, calib=8))
