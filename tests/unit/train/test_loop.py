"""The training loop: it learns, it checkpoints every epoch, and an interrupted run resumes to the same weights (the
time estimate before it changes nothing)."""

import pytest
import torch

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.models import build_detector
from xprune.train.loop import TrainSettings, train_detector


class Interrupted(Exception):
    pass


def _detector(train):
    return build_detector("ssdlite320-mbv3", "none", num_classes=train.num_classes, input_size=128)


@pytest.mark.slow
@pytest.mark.parametrize("augment, precision, schedule", [("flip", "fp32", "one-cycle"), ("ssd", "bf16", "cosine")])
def test_interrupted_run_resumes_to_the_same_weights(synth_data, tmp_path, augment, precision, schedule):
    train = CocoDetectionSet.from_folder(synth_data, "train", 128, limit=6)
    settings = TrainSettings(epochs=2, batch_size=3, augment=augment, precision=precision, schedule=schedule)

    straight = _detector(train)
    first_conv = next(m for m in straight.model.modules() if isinstance(m, torch.nn.Conv2d))
    computed_in = set()
    first_conv.register_forward_hook(lambda module, inputs, output: computed_in.add(output.dtype))
    history = train_detector(straight, train, settings, tmp_path / "a.pt", log=lambda line: None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert computed_in == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert all(p.dtype == torch.float32 for p in straight.model.parameters())  # autocast keeps fp32 weights

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise Interrupted

    resumed = _detector(train)
    with pytest.raises(Interrupted):
        train_detector(resumed, train, settings, tmp_path / "b.pt", log=stop_after_first_epoch)
    fresh = _detector(train)  # a new process: only the state file carries over
    lines = []
    history = train_detector(fresh, train, settings, tmp_path / "b.pt", log=lines.append, estimate=True)
    assert lines[0].startswith("resuming after epoch 1/2")
    assert lines[1].startswith("estimated ") and "for 1 more epoch" in lines[1]
    assert [h["epoch"] for h in history] == [1, 2]
    for (name, a), b in zip(straight.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_state_from_other_settings_and_bad_epochs_are_refused(synth_data, tmp_path):
    train = CocoDetectionSet.from_folder(synth_data, "train", 128, limit=4)
    det = _detector(train)
    train_detector(det, train, TrainSettings(epochs=1, batch_size=4), tmp_path / "s.pt", log=lambda line: None)
    assert (tmp_path / "s.json").is_file()  # the stamp beside the state names the inputs that made it
    with pytest.raises(XpruneError, match=r"training state of another run \(its settings.epochs differs\)"):
        train_detector(det, train, TrainSettings(epochs=3, batch_size=4), tmp_path / "s.pt", log=lambda line: None)
    with pytest.raises(XpruneError, match=r"another run \(its weights differs\)"):  # what the caller adds counts
        train_detector(det, train, TrainSettings(epochs=1, batch_size=4), tmp_path / "s.pt", log=lambda line: None,
                       inputs={"weights": "another"})
    (tmp_path / "s.pt").write_bytes(b"not a checkpoint")  # a state of the same inputs that cannot be read
    with pytest.raises(XpruneError, match="cannot resume"):
        train_detector(det, train, TrainSettings(epochs=1, batch_size=4), tmp_path / "s.pt", log=lambda line: None)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")  # a state without a stamp: whose it is, is unknown
    with pytest.raises(XpruneError, match="no record of its inputs"):
        train_detector(det, train, TrainSettings(epochs=1, batch_size=4), tmp_path / "bad.pt", log=lambda line: None)
    with pytest.raises(XpruneError, match="epochs must be positive"):
        train_detector(det, train, TrainSettings(epochs=0), tmp_path / "z.pt")
    with pytest.raises(XpruneError, match="unknown augmentation 'mosaic'"):
        train_detector(det, train, TrainSettings(epochs=1, augment="mosaic"), tmp_path / "m.pt")
    with pytest.raises(XpruneError, match="unknown precision 'fp8'"):
        train_detector(det, train, TrainSettings(epochs=1, precision="fp8"), tmp_path / "p.pt")
    with pytest.raises(XpruneError, match="unknown schedule 'step'"):
        train_detector(det, train, TrainSettings(epochs=1, schedule="step"), tmp_path / "c.pt")
