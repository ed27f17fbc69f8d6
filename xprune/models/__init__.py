"""Detector zoo: one adapter per family behind the common `Detector` interface."""

from xprune.models.detector import Detector, postprocess
from xprune.models.zoo import FAMILIES, build_detector, file_sha256, load_checkpoint, save_checkpoint

__all__ = ["Detector", "FAMILIES", "build_detector", "file_sha256", "load_checkpoint", "postprocess", "save_checkpoint"]
