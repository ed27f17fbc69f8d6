"""The CLI steps the pruning tests share: random-init YOLOv8n at 64 px scored with L1, then pruned with a budget."""

from pathlib import Path

from cli_helpers import run_cli

SIZE = 64


def l1_scores(tmp_path: Path, capsys, data) -> Path:
    scores = tmp_path / "scores.json"
    assert run_cli(["score", "--model", "yolov8n", "--weights", "none", "--input-size", str(SIZE), "--data",
                    str(data), "--method", "l1", "--calib-images", "4", "--out", str(scores)], capsys)[0] == 0
    return scores


def prune_with_budget(tmp_path: Path, capsys, data, out: Path, *extra: str):
    """`xprune prune` with a loose budget, one epoch of fine-tuning on 4 images; (exit code, stdout, stderr)."""
    return run_cli(["prune", "--model", "yolov8n", "--weights", "none", "--input-size", str(SIZE), "--data",
                    str(data), "--scores", str(l1_scores(tmp_path, capsys, data)), "--max-map-drop", "0.5",
                    "--finetune-epochs", "1", "--held-out-images", "4", "--finetune-images", "4",
                    "--finetune-batch-size", "4", "--out", str(out), *extra], capsys)
