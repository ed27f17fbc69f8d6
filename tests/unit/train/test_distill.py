"""Distillation from the unpruned model: the term is exactly 0 when student and teacher agree and grows when they
part; the distilled fine-tuning loop keeps the zeroed layers exactly zero and the export folds the same layers."""

import copy

import pytest
import torch

from xprune.data.coco import CocoDetectionSet
from xprune.errors import XpruneError
from xprune.models import build_detector
from xprune.train.distill import Distiller, distillation_terms
from xprune.train.loop import TrainSettings, train_detector

SIZE = 64


def outputs(seed: int, per_class: bool = False, batch: int = 2, anchors: int = 30, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, anchors, 2, generator=g) * 40
    boxes = torch.cat([corner, corner + 1 + torch.rand(batch, anchors, 2, generator=g) * 20], -1)
    if per_class:
        boxes = boxes[:, :, None].expand(batch, anchors, classes, 4).contiguous()
    return boxes, torch.rand(batch, anchors, classes, generator=g)


@pytest.mark.parametrize("per_class", [False, True])
def test_the_term_is_exactly_zero_when_the_outputs_agree_and_positive_when_they_part(per_class):
    teacher = outputs(0, per_class)
    d_cls, d_box = distillation_terms(teacher, tuple(t.clone() for t in teacher))
    assert float(d_cls) == 0.0 and float(d_box) == 0.0
    boxes, scores = teacher
    d_cls, d_box = distillation_terms((boxes, scores.flip(1)), teacher)
    assert float(d_cls) > 0 and float(d_box) == 0.0
    d_cls, d_box = distillation_terms((boxes + 2.0, scores), teacher)
    assert float(d_cls) == 0.0 and float(d_box) > 0
    summed = distillation_terms((boxes + 2.0, scores.flip(1)), teacher, sum_images=True)
    averaged = distillation_terms((boxes + 2.0, scores.flip(1)), teacher)
    assert all(torch.allclose(s, 2 * a) for s, a in zip(summed, averaged))  # two images
    with pytest.raises(XpruneError, match="do not match"):
        distillation_terms(outputs(1, classes=4), outputs(0))


def test_gradients_flow_into_the_student_only():
    teacher = tuple(t.requires_grad_() for t in outputs(0))
    student = tuple(t.clone().detach().requires_grad_() for t in outputs(1))
    sum(distillation_terms(student, teacher)).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


@pytest.mark.parametrize("family", ["yolov8n", "ssdlite320-mbv3"])
def test_a_student_equal_to_its_teacher_has_a_zero_term_in_training_mode(family):
    teacher = build_detector(family, "none", num_classes=3, input_size=SIZE)
    student = copy.deepcopy(teacher)
    student.model.train()  # the term compares the deployed functions: running BatchNorm statistics on both sides
    distiller = Distiller(teacher, 1.0)
    term = distiller.term(student, torch.rand(2, 3, SIZE, SIZE))
    assert float(term.detach()) == 0.0 and term.requires_grad
    assert student.model.training and not distiller.teacher.model.training
    assert distiller.sum_images == (family == "yolov8n")
    with pytest.raises(XpruneError, match="weight must be positive"):
        Distiller(teacher, 0.0)


def test_two_stage_families_are_not_distilled():
    from xprune.train.distill import distillation_unsupported

    det = build_detector("fasterrcnn-r50-fpn", "none", num_classes=2, input_size=SIZE)
    assert "region proposals" in distillation_unsupported(det)


@pytest.mark.slow
def test_the_loop_records_the_split_and_its_first_step_has_a_zero_term(synth_data, tmp_path):
    train = CocoDetectionSet.from_folder(synth_data, "train", 128, limit=4)
    det = build_detector("ssdlite320-mbv3", "none", num_classes=train.num_classes, input_size=128)
    distiller = Distiller(det, 0.5)  # the teacher is the model before training: equal at the first step
    lines = []
    history = train_detector(det, train, TrainSettings(epochs=2, batch_size=4, lr=1e-2), tmp_path / "s.pt",
                             log=lines.append, distiller=distiller, estimate=True)
    assert history[0]["distill_loss"] == 0.0 and history[1]["distill_loss"] > 0.0
    for h in history:
        assert h["loss"] == pytest.approx(h["task_loss"] + 0.5 * h["distill_loss"], rel=1e-5)
    assert lines[0].startswith("estimated ") and "per epoch" in lines[0]
    assert "distillation" in lines[-1]


def test_the_jax_term_is_the_torch_term():
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("optax")
    from xprune.train.jax_finetune import distillation_terms as jax_terms

    teacher, student = outputs(0), outputs(1)
    for sum_images in (False, True):
        want = distillation_terms(student, teacher, sum_images)
        got = jax_terms(tuple(jnp.asarray(t.numpy()) for t in student),
                        tuple(jnp.asarray(t.numpy()) for t in teacher), sum_images)
        assert all(float(g) == pytest.approx(float(w), rel=1e-5) for g, w in zip(got, want))
    same = jax_terms(*(tuple(jnp.asarray(t.numpy()) for t in teacher),) * 2)
    assert [float(v) for v in same] == [0.0, 0.0]
