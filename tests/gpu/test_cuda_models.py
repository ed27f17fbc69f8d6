"""GPU checks: the zoo runs on CUDA and agrees with the CPU (skipped without a GPU)."""

import torch

from xprune.models import build_detector


def test_yolov8n_cuda_matches_cpu():
    det = build_detector("yolov8n", "none", num_classes=6, input_size=160).eval()
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        cpu = det.raw(x)
        det.model.cuda()
        gpu = det.raw(x.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a, b.cpu(), rtol=1e-3, atol=1e-3)
