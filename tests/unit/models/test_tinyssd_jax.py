"""TinySSD in JAX/Flax (family tinyssd-jax) through the same score -> prune -> export -> fold -> bench path as the
PyTorch families. Skipped without the `jax` extra."""

import copy
import json

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("optax")

from cli_helpers import one_line_error, run_cli  # noqa: E402
from xprune.data.coco import calibration_set  # noqa: E402
from xprune.errors import XpruneError  # noqa: E402
from xprune.importance.scores import score_layers  # noqa: E402
from xprune.models import build_detector, load_checkpoint, save_checkpoint  # noqa: E402
from xprune.models.jax.tinyssd import ANCHORS_PER_POSITION, Targets, anchors, feature_sizes  # noqa: E402
from xprune.prune.plan import SKIP_REASON, apply_plan, plan_pruning, zeroed  # noqa: E402

SIZE = 64
CLASSES = 6
SCORE_KEYS = ["layer", "type", "params", "macs", "score", "rank", "predictor"]  # a PyTorch family's, in order


def _targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
            {"boxes": torch.tensor([[30.0, 20.0, 60.0, 62.0], [5.0, 5.0, 20.0, 20.0]]), "labels": torch.tensor([0, 5])}]


def _state(det) -> dict:
    return {k: np.array(v) for k, v in nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(det.model))).items()}


def _rel_err(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) / max(1.0, float(np.max(np.abs(np.asarray(x)))))
               for x, y in zip(a, b))


@pytest.fixture(scope="module")
def det():
    return build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)


@pytest.fixture(scope="module")
def calib(synth_data):
    return calibration_set(synth_data, SIZE, 8)


@pytest.mark.slow
def test_raw_outputs_follow_the_detector_convention(det):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    boxes, scores = det.raw(x)
    n = sum(s * s for s in feature_sizes(SIZE)) * ANCHORS_PER_POSITION
    assert len(anchors(SIZE)) == n
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, CLASSES)
    assert boxes.dtype == scores.dtype == torch.float32
    assert float(boxes.min()) >= 0.0 and float(boxes.max()) <= SIZE
    assert bool((boxes[..., 2:] >= boxes[..., :2]).all())
    # softmax over background + classes, background dropped: probabilities summing to less than 1
    assert float(scores.min()) >= 0.0 and float(scores.sum(-1).max()) < 1.0
    again = det.raw(x.numpy())  # numpy in, the same outputs
    assert torch.equal(again[0], boxes) and torch.equal(again[1], scores)
    preds = det.predict(x)
    assert len(preds) == 2
    for p in preds:
        assert p["boxes"].shape[1] == 4 and len(p["scores"]) == len(p["labels"]) <= 100
        assert len(p["labels"]) == 0 or int(p["labels"].max()) < CLASSES


def test_convs_in_forward_order_with_protected_predictors(det):
    names = list(det.conv_layers())
    assert names[:2] == ["base.0.conv", "base.1.conv"] and names[-2:] == ["cls.4", "box.4"]
    assert len(names) == 21 and set(det.predictor_layers) == {f"{h}.{k}" for h in ("cls", "box") for k in range(5)}
    assert type(det).framework == "jax"


def test_loss_is_finite_and_leaves_batchnorm_statistics_alone(det):
    before = _state(det)
    loss = det.loss(torch.rand(2, 3, SIZE, SIZE), _targets())
    assert loss.dim() == 0 and torch.isfinite(loss) and float(loss) > 0
    after = _state(det)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_loss_decreases_in_a_few_training_steps():
    from xprune.train.jax_loop import TrainConfig, make_optimizer, make_train_step

    d = build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)
    d.model.train()
    graphdef, params, stats, rest = nnx.split(d.model, nnx.Param, nnx.BatchStat, ...)
    tx = make_optimizer(TrainConfig(epochs=1, lr=1e-3, warmup_epochs=0.0), steps_per_epoch=8)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, rest, tx, SIZE)
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    t = Targets.pad(_targets())
    losses = []
    for _ in range(8):  # the first step has the warm-up's zero learning rate
        params, stats, opt_state, loss = step(params, stats, opt_state, x, t.boxes, t.labels, t.valid)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < 0.75 * losses[0], losses


@pytest.mark.slow
def test_training_checkpoints_every_epoch_and_resumes_where_it_stopped(synth_data, tmp_path):
    from xprune.train.jax_loop import LAST_FILE, train_tinyssd

    kwargs = dict(epochs=2, size=SIZE, batch_size=4, eval_every=0)
    straight = train_tinyssd(synth_data, log_path=tmp_path / "a.log", work_dir=tmp_path / "a", log=lambda m: None,
                             **kwargs)

    def stop_after_epoch_one(message):
        if message.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_tinyssd(synth_data, log_path=tmp_path / "b.log", work_dir=tmp_path / "b", log=stop_after_epoch_one,
                      **kwargs)
    assert (tmp_path / "b.log").read_text().count("\n") == 1 and (tmp_path / "b" / LAST_FILE).is_file()
    messages = []
    resumed = train_tinyssd(synth_data, log_path=tmp_path / "b.log", work_dir=tmp_path / "b", log=messages.append,
                            **kwargs)
    assert messages[1].startswith("resuming after epoch 1/2") and messages[-1].startswith("epoch 2/2")
    assert [r["epoch"] for r in resumed.history] == [1, 2] and resumed.history[1]["loss"] == straight.history[1]["loss"]
    assert "val_map" in resumed.history[1] and "val_map" not in resumed.history[0]
    a, b = load_checkpoint(straight.checkpoint, "tinyssd-jax"), load_checkpoint(resumed.checkpoint, "tinyssd-jax")
    assert a.category_ids == b.category_ids and a.meta["epoch"] == 2
    assert all(np.array_equal(v, _state(b)[k]) for k, v in _state(a).items())
    assert [ln.split(" time")[0] for ln in (tmp_path / "a.log").read_text().splitlines()] == \
        [ln.split(" time")[0] for ln in (tmp_path / "b.log").read_text().splitlines()]
    with pytest.raises(XpruneError, match=r"training state of another run \(its settings\.lr differs\)"):
        train_tinyssd(synth_data, log_path=tmp_path / "b.log", work_dir=tmp_path / "b", lr=1e-4, **kwargs)


def test_padded_targets_ignore_degenerate_boxes():
    t = Targets.pad([{"boxes": np.array([[1, 1, 5, 5], [3, 3, 3, 9]], np.float32), "labels": np.array([1, 2])},
                     {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}], max_objects=3)
    assert t.boxes.shape == (2, 3, 4) and t.valid.tolist() == [[True, False, False], [False, False, False]]
    assert t.labels[0, 0] == 1 and np.all(t.boxes[..., 2:] > t.boxes[..., :2])


@pytest.mark.parametrize("method", ["l1", "random"])
def test_data_free_scores_cover_every_conv_in_the_pytorch_format(det, method):
    doc = score_layers(det, method, seed=3)
    assert doc["model"] == "tinyssd-jax" and doc["method"] == method and doc["input_size"] == SIZE
    layers = doc["layers"]
    assert [e["layer"] for e in layers] == list(det.conv_layers())
    assert all(list(e) == SCORE_KEYS for e in layers)
    assert sorted(e["rank"] for e in layers) == list(range(1, len(layers) + 1))
    assert all(np.isfinite(e["score"]) and e["score"] >= 0 for e in layers)
    by = {e["layer"]: e for e in layers}
    convs = det.conv_layers()
    if method == "l1":
        for name, conv in convs.items():
            assert by[name]["score"] == pytest.approx(float(np.abs(np.asarray(conv.kernel[...])).sum()), rel=1e-6)
    # base.0: 3x3 conv 3->16, stride 2, no bias (BatchNorm follows): 27 x 16 per output position
    assert by["base.0.conv"]["params"] == 27 * 16 and by["base.0.conv"]["macs"] == 27 * 16 * (SIZE // 2) ** 2
    assert by["base.0.conv"]["type"] == "conv" and not by["base.0.conv"]["predictor"] and by["cls.0"]["predictor"]
    s = feature_sizes(SIZE)[0]
    a = ANCHORS_PER_POSITION * (CLASSES + 1)
    assert by["cls.0"]["macs"] == 9 * 64 * a * s * s + a * s * s  # with its bias, as ptflops counts


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
@pytest.mark.parametrize("method", ["attr", "taylor"])
def test_gradient_scores_cover_every_conv_and_a_zeroed_conv_scores_zero(calib, method):
    d = build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)
    doc = score_layers(d, method, calib, batch_size=4)
    assert doc["calibration"]["images"] == 8 and doc["calibration"]["batches"] == 2
    scores = {e["layer"]: e["score"] for e in doc["layers"]}
    assert list(scores) == list(d.conv_layers())
    assert all(np.isfinite(v) and v >= 0 for v in scores.values()) and sum(scores.values()) > 0
    # blocks.1.0 has no bias: zeroed, its output A is 0 (attr) and so are its weights (taylor)
    with zeroed(d, ["blocks.1.0.conv"]):
        again = {e["layer"]: e["score"] for e in score_layers(d, method, calib, batch_size=4)["layers"]}
    assert again["blocks.1.0.conv"] == 0.0 and again["blocks.0.0.conv"] > 0


@pytest.mark.slow
def test_attr_is_gradient_times_activation(calib):
    """The zero tap's gradient is the loss's derivative at the conv output A: along A (the output scaled by 1 + t)
    it matches a central finite difference of the loss (in float64), and |dL/dA * A| summed bounds it."""
    d = build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)
    x, targets, _ = next(calib.batches(8))
    attr = {e["layer"]: e["score"] for e in score_layers(d, "attr", calib, batch_size=8)["layers"]}
    _, state = d.split()
    fns = d.compiled()
    t = Targets.pad(targets)
    with jax.enable_x64(True):
        state = jax.tree.map(lambda a: jax.numpy.asarray(a, jax.numpy.float64), state)
        xs = jax.numpy.asarray(x.numpy(), jax.numpy.float64)
        _, record = fns.loss(state, xs, t.boxes, t.labels, t.valid)
        for name in ("base.2.conv", "blocks.0.1.conv", "cls.1"):
            def loss_along(s, name=name):
                return fns.loss(state, xs, t.boxes, t.labels, t.valid, {name: s * record[name]})[0]

            along = float(jax.grad(loss_along)(0.0))
            finite = (float(loss_along(1e-4)) - float(loss_along(-1e-4))) / 2e-4
            assert along == pytest.approx(finite, rel=1e-5), name
            assert attr[name] > 0 and abs(along) / x.shape[0] <= attr[name] * (1 + 1e-4)


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_zeroing_is_exact_in_the_parameter_tree():
    d = build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)
    before = _state(d)
    plan = plan_pruning(d, score_layers(d, "l1"), 0.2, "safe")
    assert plan.layers and not set(plan.layers) & set(d.predictor_layers)
    with zeroed(d, plan.layers):
        assert all(not np.any(_state(d)[(*k[:-1], "kernel")]) for k in [_path(n) for n in plan.layers])
    assert all(np.array_equal(v, _state(d)[k]) for k, v in before.items())  # restored bit for bit
    pruned = copy.deepcopy(d)
    assert apply_plan(pruned, plan) == plan.layers
    after = _state(pruned)
    planned = {_path(n) for n in plan.layers}
    for key, value in before.items():
        if key in planned:
            assert not np.any(after[key]) and after[key].shape == value.shape
        else:
            assert np.array_equal(after[key], value), key  # biases, BatchNorm and every other conv untouched
    assert np.array_equal(_state(d)[_path(plan.layers[0])], before[_path(plan.layers[0])])  # the original too


def _path(name: str) -> tuple:
    return (*(int(p) if p.isdigit() else p for p in name.split(".")), "kernel")


@pytest.mark.slow
def test_safe_policy_skips_the_base_its_only_input_path():
    d = build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)
    doc = score_layers(d, "l1")
    for e in doc["layers"]:  # the base first in the ranking: zeroing any of it leaves no input-dependent output
        e["score"] = 0.0 if e["layer"].startswith("base.") else 1.0 + e["rank"]
    plan = plan_pruning(d, doc, 0.5, "safe")
    assert [c.layer for c in plan.skipped] == [f"base.{i}.conv" for i in range(5)]
    assert all(c.reason == SKIP_REASON for c in plan.skipped)
    assert all(n.startswith("blocks.") for n in plan.layers)
    everything = plan_pruning(d, doc, 0.5, "all")
    assert everything.layers[:5] == [f"base.{i}.conv" for i in range(5)]


def test_checkpoint_roundtrip_half_and_errors(det, tmp_path):
    x = torch.rand(1, 3, SIZE, SIZE)
    path = tmp_path / "m.msgpack"
    save_checkpoint(det, path, meta={"note": "x"})
    again = load_checkpoint(path, "tinyssd-jax")
    assert (again.input_size, again.num_classes, again.meta) == (SIZE, CLASSES, {"note": "x"})
    assert torch.equal(again.raw(x)[1], det.raw(x)[1])
    save_checkpoint(det, tmp_path / "h.msgpack", half=True)
    half = load_checkpoint(tmp_path / "h.msgpack", "tinyssd-jax")
    assert (tmp_path / "h.msgpack").stat().st_size < 0.6 * path.stat().st_size
    assert all(v.dtype == np.float32 for v in _state(half).values())
    assert _rel_err(det.raw(x), half.raw(x)) < 1e-2
    with pytest.raises(XpruneError, match=r"name it \*\.msgpack"):
        save_checkpoint(det, tmp_path / "m.pt")
    (tmp_path / "bad.msgpack").write_bytes(b"not msgpack at all \xff\x00")
    with pytest.raises(XpruneError, match="corrupt or not a flax msgpack file"):
        load_checkpoint(tmp_path / "bad.msgpack", "tinyssd-jax")
    with pytest.raises(XpruneError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.msgpack", "tinyssd-jax")
    from xprune.models.jax.checkpoint import load_state, read_checkpoint

    other = build_detector("tinyssd-jax", "none", num_classes=3, input_size=SIZE)
    save_checkpoint(other, tmp_path / "o.msgpack")
    with pytest.raises(XpruneError, match="does not fit tinyssd-jax: cls.0.* has shape"):
        load_state(build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE),
                   read_checkpoint(tmp_path / "o.msgpack")["state"], tmp_path / "o.msgpack")


def test_jax_runner_matches_the_detector(det, tmp_path):
    from xprune.runtime.registry import TargetOptions, backend_for

    save_checkpoint(det, tmp_path / "m.msgpack")
    backend = backend_for(tmp_path / "m.msgpack")
    assert backend.name == "jax" and backend.available() == jax.__version__
    runner, facts = backend.open(tmp_path / "m.msgpack", TargetOptions())
    assert facts["model"] == "tinyssd-jax" and facts["input_shape"] == [1, 3, SIZE, SIZE]
    assert facts["variant"] == "baseline"
    x = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    with runner:
        out = runner.infer(x)
        assert runner.describe()["backend"] == "jax" and runner.describe()["precision"] == "fp32"
    assert _rel_err(out, [o.numpy() for o in det.raw(x)]) == 0.0
    with pytest.raises(XpruneError, match="runs on the CPU"):
        backend.open(tmp_path / "m.msgpack", TargetOptions(device="cuda"))
    with pytest.raises(XpruneError, match="yolov8n is not a JAX family"):
        from xprune.runtime.jax.loader import DetectorFromCheckpoint
        DetectorFromCheckpoint(tmp_path / "m.msgpack", "yolov8n")()


# --- export through jax2onnx, then the fold ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A pruned TinySSD (blocks.2.0 zeroed: the last block and the pooled scale lose their input), exported
    unfolded and folded."""
    pytest.importorskip("jax2onnx")
    from xprune.export.onnx_export import export_onnx
    from xprune.importance.scores import conv_facts

    d = build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE)
    doc = score_layers(d, "l1")
    for e in doc["layers"]:
        e["score"] = 0.0 if e["layer"] == "blocks.2.0.conv" else 1.0 + e["rank"]
    plan = plan_pruning(d, doc, 0.05, "safe")
    assert plan.layers == ["blocks.2.0.conv"]
    apply_plan(d, plan)
    d.meta = {"pruning": plan.to_json()}
    out = tmp_path_factory.mktemp("tinyssd-export")
    zeroed_report = export_onnx(d, out / "zeroed.onnx", fold=False)
    folded_report = export_onnx(d, out / "folded.onnx", fold=True)
    return d, out, zeroed_report, folded_report, conv_facts(d)


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_export_matches_jax_and_carries_metadata(exported):
    import onnx

    from xprune.export.onnx_export import get_metadata
    from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

    d, out, zeroed_report, folded_report, _ = exported
    model = onnx.load(str(out / "folded.onnx"))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["boxes", "scores"]
    assert [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, SIZE, SIZE]
    meta = get_metadata(model)
    assert meta["family"] == "tinyssd-jax" and meta["variant"] == "folded" and meta["num_classes"] == CLASSES
    assert meta["zeroed_layers"] == ["blocks.2.0.conv"] and zeroed_report["variant"] == "zeroed"
    rng = np.random.default_rng(0)
    with OnnxRuntimeRunner(out / "zeroed.onnx", threads=1) as a, OnnxRuntimeRunner(out / "folded.onnx", threads=1) as b:
        for _ in range(3):
            x = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
            reference = [o.numpy() for o in d.raw(x)]
            assert _rel_err(reference, a.infer(x)) <= 1e-4
            assert _rel_err(reference, b.infer(x)) <= 1e-4
            assert _rel_err(a.infer(x), b.infer(x)) <= 1e-5


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_fold_removes_exactly_the_work_the_zeroed_conv_made_pointless(exported):
    _, _, zeroed_report, folded_report, facts = exported
    # blocks.2.0 zeroed (no bias, BatchNorm after it): its output is constant, and so are blocks.2.1's, the pooled
    # scale 5 made from it and the heads of scales 4 and 5; scales 1-3 still see the input
    dead = ["blocks.2.0.conv", "blocks.2.1.conv", "cls.3", "box.3", "cls.4", "box.4"]
    macs = {name: _onnx_macs(name, f) for name, f in facts.items()}
    total, removed = sum(macs.values()), sum(macs[n] for n in dead)
    assert zeroed_report["macs_before"] == zeroed_report["macs_after"] == total
    assert folded_report["macs_before"] == total and folded_report["macs_after"] == total - removed
    assert folded_report["removed_mac_fraction"] == pytest.approx(removed / total)
    assert not folded_report["dead_outputs"] and folded_report["nodes_after"] < zeroed_report["nodes_after"]


def _onnx_macs(name: str, fact: dict) -> int:
    """A conv's MACs as the ONNX count has them: scores.json's (ptflops') without the bias adds, one per output
    element of a conv with a bias (the heads' predictors)."""
    from xprune.models.jax.tinyssd import FEATURES

    if not name.startswith(("cls.", "box.")):
        return fact["macs"]
    per_position = 9 * FEATURES[int(name.split(".")[1])]
    return fact["macs"] - fact["macs"] // (per_position + 1)


# --- the reference checkpoint --------------------------------------------------------------------------------------

def test_reference_checkpoint_is_listed_and_loads():
    from xprune.files import file_sha256
    from xprune.reference import reference_models

    ref = reference_models()["tinyssd-jax"]
    assert ref["val_map"] >= 0.3 and ref["checkpoint"] == "tinyssd-jax-synth.msgpack"
    assert file_sha256(ref["path"]) == ref["sha256"] and ref["bytes"] < 5_000_000
    det = load_checkpoint(ref["path"], "tinyssd-jax")
    assert (det.input_size, det.num_classes, det.category_ids) == (320, 6, [1, 2, 3, 4, 5, 6])


@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_pruned_reference_exports_and_folds_exactly(synth_data, tmp_path):
    pytest.importorskip("jax2onnx")
    from xprune.export.onnx_export import export_onnx
    from xprune.reference import reference_models
    from xprune.runtime.onnxruntime.runner import OnnxRuntimeRunner

    det = load_checkpoint(reference_models()["tinyssd-jax"]["path"], "tinyssd-jax")
    plan = plan_pruning(det, score_layers(det, "l1"), 0.2, "safe")
    apply_plan(det, plan)
    det.meta = {"pruning": plan.to_json()}
    report = export_onnx(det, tmp_path / "m.onnx")
    assert report["variant"] == "folded" and report["macs_after"] < report["macs_before"]
    x, _, _ = next(calibration_set(synth_data, 320, 2).batches(2))  # real images, letterboxed to 320
    with OnnxRuntimeRunner(tmp_path / "m.onnx", threads=1) as r:
        for i in range(2):
            assert _rel_err([o.numpy() for o in det.raw(x[i:i + 1])], r.infer(x[i:i + 1].numpy())) <= 1e-4


# --- the command line ----------------------------------------------------------------------------------------------

@pytest.mark.slow  # the full suite runs it; the fast loop stays under two minutes
def test_cli_score_prune_export_bench(synth_data, tmp_path, capsys):
    scores, pruned, onnx_path = tmp_path / "s.json", tmp_path / "p.msgpack", tmp_path / "p.onnx"
    base = tmp_path / "base.msgpack"
    save_checkpoint(build_detector("tinyssd-jax", "none", num_classes=CLASSES, input_size=SIZE), base)
    code, out, _ = run_cli(["score", "--model", "tinyssd-jax", "--weights", str(base), "--data", str(synth_data),
                            "--method", "attr", "--calib-images", "8", "--batch-size", "4", "--out", str(scores)], capsys)
    assert code == 0 and "scored 21 conv layers with attr" in out
    code, out, _ = run_cli(["prune", "--model", "tinyssd-jax", "--weights", str(base), "--scores", str(scores),
                            "--rate", "0.2", "--out", str(pruned)], capsys)
    assert code == 0 and pruned.is_file() and pruned.with_suffix(".plan.json").is_file()
    plan = json.loads(pruned.with_suffix(".plan.json").read_text())
    assert plan["model"] == "tinyssd-jax" and plan["method"] == "attr" and len(plan["selected"]) == 2
    code, out, _ = run_cli(["export", "--model", "tinyssd-jax", "--weights", str(pruned), "--out", str(onnx_path)],
                           capsys)
    assert code == 0 and onnx_path.is_file() and "removed" in out
    results = tmp_path / "r.json"
    code, out, _ = run_cli(["bench", str(base), str(pruned), str(onnx_path), "--interleave", "--runs", "3",
                            "--warmup-runs", "1", "--min-seconds", "0", "--data", str(synth_data), "--val-images", "4",
                            "--out", str(results)], capsys)
    assert code == 0, out
    rows = json.loads(results.read_text())["rows"]
    assert [(r["engine"], r["variant"]) for r in rows] == [("jax", "baseline"), ("jax", "zeroed"),
                                                           ("onnxruntime", "folded")]
    onnx_keys = set(rows[2]) - {"macs", "removed_mac_fraction"}
    assert all(onnx_keys - {"zeroed_layers"} <= set(r) for r in rows[:2])
    assert all(r["model"] == "tinyssd-jax" and r["map"] is not None for r in rows)
    assert rows[1]["map"] == pytest.approx(rows[2]["map"], abs=1e-3)  # the fold is exact


def test_cli_rejects_criteria_jax_does_not_compute(det, tmp_path, capsys):
    code, _, err = run_cli(["score", "--model", "tinyssd-jax", "--weights", "none", "--method", "hrank",
                            "--out", str(tmp_path / "s.json")], capsys)
    assert code == 2 and "not available for tinyssd-jax (JAX)" in one_line_error(err)
    assert not (tmp_path / "s.json").exists()


def test_finetuning_a_jax_checkpoint_without_a_plan_is_one_line(tmp_path, capsys):
    from cli_helpers import one_line_error, run_cli
    from xprune.models import save_checkpoint
    from xprune.models.jax.detector import build_tinyssd

    det = build_tinyssd(3, 64)
    path = tmp_path / "tiny.msgpack"
    save_checkpoint(det, path)
    code, _, err = run_cli(["finetune", "--model", "tinyssd-jax", "--weights", str(path), "--data", str(tmp_path),
                            "--epochs", "1", "--out", str(tmp_path / "ft.msgpack")], capsys)
    assert code == 2 and "carries no pruning plan" in one_line_error(err)
