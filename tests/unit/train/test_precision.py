"""The bf16-against-fp32 gradient check: it really runs the step in both precisions on the same weights, reports
agreement that is a cosine and a relative difference, and leaves the model as it found it."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xprune.data.coco import CocoDetectionSet
from xprune.models import build_detector
from xprune.train.loop import training_batch
from xprune.train.precision import gradient_agreement

ROOT = Path(__file__).resolve().parents[3]


def test_both_precisions_on_the_same_weights_and_the_model_is_restored(synth_data):
    train = CocoDetectionSet.from_folder(synth_data, "train", 128, limit=6)
    det = build_detector("ssdlite320-mbv3", "none", num_classes=train.num_classes, input_size=128)
    generator = torch.Generator().manual_seed(0)
    batches = [training_batch(train, [0, 1, 2], "flip", generator), training_batch(train, [3, 4, 5], "flip", generator)]
    before = {k: v.clone() for k, v in det.model.state_dict().items()}

    records = gradient_agreement(det, batches, largest=3)

    assert len(records) == 2
    for r in records:
        assert math.isfinite(r["loss_fp32"]) and math.isfinite(r["loss_bf16"])
        assert r["loss_bf16"] != r["loss_fp32"]  # bf16 really ran
        assert abs(r["loss_bf16"] - r["loss_fp32"]) < 0.05 * abs(r["loss_fp32"])  # on the same weights and batch
        assert -1.0 <= r["cosine"] < 1.0 and r["relative_difference"] > 0.0 and r["fp32_norm"] > 0.0
        assert set(r["modules"]) >= {"backbone", "head"}
        norms = [p["fp32_norm"] for p in r["largest"]]
        assert len(norms) == 3 and norms == sorted(norms, reverse=True)
        total = math.sqrt(sum(m["fp32_norm"] ** 2 for m in r["modules"].values()))
        assert total == pytest.approx(r["fp32_norm"], rel=1e-9)
    after = det.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    assert not det.model.training and all(p.grad is None for p in det.model.parameters())


@pytest.mark.slow  # a subprocess that imports torch; the full suite runs it
def test_script_refuses_a_family_it_does_not_train_in_one_line(synth_data, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "precision_check.py"), "yolov8n",
                           "--data", str(synth_data), "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the precision check covers") and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
