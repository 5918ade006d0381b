"""Faster R-CNN + FPN on stepnet ResNets: torchvision equivalence, COCO data and COCOeval on the
real coco128 images, step-size modules at batch 1 and with frozen norms, the detection task."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from stepnet import create_model
from stepnet.attention import FrozenBatchNorm1d, list_attention
from stepnet.cli.main import main
from stepnet.data.coco import CocoBoxes, coco_paths
from stepnet.engine.tasks.detection import coco_evaluate, to_coco_results
from tests.helpers import load_benchmark

COCO128 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco128"
needs_coco128 = pytest.mark.skipif(not COCO128.is_dir(), reason="../shared/data/coco128 absent")


def test_torchvision_faster_rcnn_state_dict_and_detections_are_identical():
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=256, max_size=320).eval()
    ours = create_model("fasterrcnn_resnet50_fpn", min_size=256, max_size=320).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    images = [torch.rand(3, 200, 300), torch.rand(3, 240, 180)]
    with torch.no_grad():
        expected, got = reference(images), ours(images)
    for a, b in zip(expected, got):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("attention", [a for a in list_attention() if a != "none"])
def test_every_step_size_trains_at_batch_one_with_frozen_and_trainable_norms(attention):
    for frozen in (True, False):
        body = create_model("resnet18", attention=attention,
                            norm_layer=FrozenBatchNorm2d if frozen else torch.nn.BatchNorm2d)
        modules = [m for b in body.residual_blocks() for m in b.attention.modules()]
        trainable = [m for m in modules if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        frozen_ones = [m for m in modules if isinstance(m, (FrozenBatchNorm1d, FrozenBatchNorm2d))]
        if frozen:   # the step-size modules' own norms are frozen with the backbone's
            assert not trainable
        else:
            assert not frozen_ones
        features = _resnet_fpn_extractor(body, 5 if not frozen else 3).train()
        out = features(torch.randn(1, 3, 96, 96))
        sum(v.sum() for v in out.values()).backward()
        assert all(torch.isfinite(v).all() for v in out.values())


def test_frozen_step_size_norms_compute_what_the_eval_mode_norms_did():
    body = create_model("resnet18", attention="stepnet", attention_options={"structure": "b"})
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    block = body.layer2[1]
    x, fx = torch.randn(3, 128, 7, 7), torch.randn(3, 128, 7, 7)
    expected = block.attention.eval()(x, fx)
    from stepnet.attention import freeze_batch_norms

    freeze_batch_norms(body)
    torch.testing.assert_close(block.attention.train()(x, fx), expected)


@needs_coco128
def test_coco128_loads_with_coco_category_ids_and_empty_images():
    data = CocoBoxes(COCO128, train=False)
    assert len(data) == 128
    raw = json.loads(coco_paths(COCO128, train=False)[1].read_text())
    image, target = data[0]
    assert image.dtype == torch.float32 and 0 <= float(image.min()) <= float(image.max()) <= 1
    truth = [a for a in raw["annotations"] if a["image_id"] == target["image_id"]]
    assert sorted(target["labels"].tolist()) == sorted(a["category_id"] for a in truth)
    x, y, w, h = truth[0]["bbox"]
    boxes = target["boxes"].tolist()
    assert any(abs(b[0] - x) < 1e-3 and abs(b[2] - (x + w)) < 1e-3 for b in boxes)
    annotated = {a["image_id"] for a in raw["annotations"]}
    empty = [i for i, image_id in enumerate(data.ids) if image_id not in annotated]
    if empty:
        assert data[empty[0]][1]["boxes"].shape == (0, 4)


@needs_coco128
def test_cocoeval_of_the_ground_truth_is_perfect():
    annotation_file = coco_paths(COCO128, train=False)[1]
    raw = json.loads(annotation_file.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in raw["annotations"]]
    image_ids = [i["id"] for i in raw["images"]]
    metrics = coco_evaluate(str(annotation_file), results, image_ids)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP50"] == pytest.approx(100.0)
    # and the torchvision -> COCO box conversion keeps them: xyxy -> xywh
    boxes = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    converted = to_coco_results([{"boxes": boxes, "scores": torch.tensor([0.9]),
                                  "labels": torch.tensor([3])}], [7])
    assert converted == [{"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 60.0],
                          "score": pytest.approx(0.9)}]


def test_backbone_checkpoint_initialises_the_body(tmp_path):
    from stepnet.engine import save_checkpoint

    classifier = create_model("resnet18", attention="se", num_classes=10)
    save_checkpoint(tmp_path / "backbone.pt", {"model": {"name": "resnet18", "kwargs": {}},
                                               "state_dict": classifier.state_dict()})
    detector = create_model("fasterrcnn_resnet18_fpn", attention="se",
                            backbone_checkpoint=str(tmp_path / "backbone.pt"))
    body = detector.backbone.body
    torch.testing.assert_close(body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    torch.testing.assert_close(body.layer4[1].attention.fc1.weight,
                               classifier.layer4[1].attention.fc1.weight)
    # a trained backbone freezes the norms and trains the last 3 stages, as torchvision
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="does not fit the detector body"):
        create_model("fasterrcnn_resnet18_fpn", attention="stepnet",
                     backbone_checkpoint=str(tmp_path / "backbone.pt"))


def test_bad_detection_input_is_one_line(tmp_path, capsys):
    out = ["--quiet", "--output", str(tmp_path / "run")]
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    assert main(["train", "--task", "detection", "--data-dir", str(tmp_path / "coco"), *out]) == 2
    assert "looked for" in capsys.readouterr().err
    (tmp_path / "coco" / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (tmp_path / "coco" / "annotations" / f"instances_{split}.json").write_text("not json")
    assert main(["train", "--task", "detection", "--data-dir", str(tmp_path / "coco"), *out]) == 2
    assert "is not a COCO annotation file" in capsys.readouterr().err
    bad = {"images": [{"id": 1, "file_name": "1.jpg", "width": 9, "height": 9}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 4],
                            "iscrowd": 0, "area": 0}], "categories": [{"id": 1, "name": "x"}]}
    for split in ("train2017", "val2017"):
        (tmp_path / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(bad))
        Image.new("RGB", (9, 9)).save(tmp_path / "coco" / split / "1.jpg")
    assert main(["train", "--task", "detection", "--data-dir", str(tmp_path / "coco"), *out]) == 2
    err = capsys.readouterr().err
    assert "annotation 5 has bbox [1, 1, 0, 4]" in err and "positive width and height" in err
    assert err.count("\n") == 1
    assert main(["train", "--task", "detection", "--model", "fasterrcnn_resnet34_fpn",
                 "--data-dir", str(COCO128), *out]) == 2
    assert "valid: fasterrcnn_resnet101_fpn, fasterrcnn_resnet18_fpn" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_coco128
def test_detection_end_to_end_train_evaluate_picture_stiffness(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "detection", "--dataset", "coco", "--data-dir",
                 str(COCO128), "--attention", "stepnet", "--train-subset", "4", "--epochs", "1",
                 "--min-size", "128", "--max-size", "160", "--quiet", "--output", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"test_AP", "test_AP50", "test_APs", "train_classifier"} <= set(rows[-1])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu", "--batch-size", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "detection" and result["test_AP"] == pytest.approx(rows[-1]["test_AP"])
    image = COCO128 / "val2017" / sorted(p.name for p in (COCO128 / "val2017").iterdir())[0]
    assert main(["detect", str(run), str(image), "--score", "0.0", "--output",
                 str(tmp_path / "pictures"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 1
    assert main(["stiffness", str(run), "--max-inputs", "2", "--image-size", "96", "--quiet",
                 "--device", "cpu"]) == 0
    stiffness = json.loads((run / "stiffness" / "stiffness.json").read_text())
    assert len(stiffness["per_block"]) == 8     # ResNet-18's blocks
    shutil.rmtree(tmp_path / "pictures")


@pytest.mark.slow
@needs_coco128
def test_overfits_a_few_real_images_to_a_high_ap50():
    """The whole chain on real data -- loading, COCO category ids, box formats, the four
    losses, COCO result conversion, COCOeval -- by overfitting ResNet-18-FPN (from scratch,
    small images, smaller RPN / ROI samples for speed) on 4 coco128 train images and evaluating
    on those same images (benchmarks/detection_check.py, whose records say what it reaches)."""
    result = load_benchmark("detection_check").overfit(COCO128, "none")
    assert result["metrics"]["AP50"] >= OVERFIT_AP50, result


OVERFIT_AP50 = 90.0   # a stated floor; the committed records hold the measured values


def test_the_detection_check_block_is_generated_from_its_records():
    from stepnet.studies import generated_block

    check = load_benchmark("detection_check")
    records = check.load_records()
    assert generated_block(Path(__file__).resolve().parents[1] / "docs" / "detection.md",
                           "detection-check") == check.markdown(records)
    for record in records:   # the records were measured with the settings the test runs
        assert record["settings"] == check.SETTINGS


GOOD_BOX = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0,
            "area": 16}


@pytest.mark.parametrize("change, message", [
    ({"images": [{"id": 1, "file_name": "../escape.jpg", "width": 9, "height": 9}]},
     "outside"),
    ({"images": [{"id": 1, "file_name": "missing.jpg", "width": 9, "height": 9}]},
     "does not exist"),
    ({"categories": [{"id": 95, "name": "x"}], "annotations": [dict(GOOD_BOX, category_id=95)]},
     "category id 95 is outside 1..90"),
    ({"annotations": [dict(GOOD_BOX, category_id=2)]}, "has category 2, which is not in"),
    ({"annotations": [dict(GOOD_BOX, image_id=7)]}, "refers to image 7, which is not"),
    ({"annotations": [dict(GOOD_BOX, bbox=[1, 1, float("nan"), 4])]}, "four finite numbers"),
    ({"annotations": [dict(GOOD_BOX, bbox=[1, 1, "4", 4])]}, "four finite numbers"),
    ({"annotations": [dict(GOOD_BOX, bbox=[6, 1, 8, 4])]}, "reaches beyond its 9x9 image"),
])
def test_coco_annotations_are_validated_before_training(tmp_path, capsys, change, message):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    Image.new("RGB", (9, 9)).save(tmp_path / "escape.jpg")
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 9, "height": 9}],
            "annotations": [GOOD_BOX], "categories": [{"id": 1, "name": "x"}], **change}
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        Image.new("RGB", (9, 9)).save(root / split / "1.jpg")
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    code = main(["train", "--task", "detection", "--data-dir", str(root), "--quiet",
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_public_fpn_builder_matches_torchvisions_extractor(trainable):
    """models.detection.resnet_fpn (public BackboneWithFPN) builds what torchvision's private
    _resnet_fpn_extractor builds: the same modules, trainable flags and outputs."""
    from stepnet.models.detection import resnet_fpn

    torch.manual_seed(0)
    ours = resnet_fpn(create_model("resnet18"), trainable).eval()
    torch.manual_seed(0)
    theirs = _resnet_fpn_extractor(create_model("resnet18"), trainable).eval()
    assert [(n, p.requires_grad) for n, p in ours.named_parameters()] == \
        [(n, p.requires_grad) for n, p in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == list(b) == ["0", "1", "2", "3", "pool"]
    assert all(torch.equal(a[k], b[k]) for k in a)
