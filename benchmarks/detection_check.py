"""The detection chain on real data: overfit Faster R-CNN + FPN (ResNet-18, from scratch) on a
few coco128 training images and evaluate it with COCOeval on those same images.

It checks loading, COCO category ids, box formats, the four losses, the conversion to COCO
results and COCOeval together; it says nothing about which attention module detects better
(coco128 is far too small for that). One committed record per variant:

    python benchmarks/detection_check.py [--variants none se stepnet] [--write]

writes ``benchmarks/records/detection_check/<variant>.json`` (settings, the commit, the final
loss and COCOeval's metrics) and, with ``--write``, docs/detection.md's generated block.
``tests/test_detection.py`` runs :func:`overfit` itself (slow) and checks the block against the
records. About a minute a variant on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "coco128"
RECORDS = ROOT / "benchmarks" / "records" / "detection_check"
SETTINGS = {"model": "fasterrcnn_resnet18_fpn", "images": 4, "steps": 80, "lr": 0.02,
            "warmup_steps": 20, "momentum": 0.9, "clip_grad_norm": 10.0, "seed": 0,
            "min_size": 160, "max_size": 224}
# smaller RPN / ROI samples than torchvision's defaults, for speed
MODEL_OPTIONS = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150,
                 "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
                 "box_batch_size_per_image": 128, "rpn_batch_size_per_image": 128}


def overfit(data_dir: Path, attention: str = "none", **overrides: Any) -> dict[str, Any]:
    """Train on ``SETTINGS["images"]`` coco128 training images and evaluate on them: the final
    training loss and COCOeval's metrics (AP, AP50, ... in %)."""
    from stepnet import create_model
    from stepnet.data.coco import CocoBoxes, coco_paths, collate_detection
    from stepnet.engine.tasks.detection import coco_evaluate, to_coco_results

    settings = {**SETTINGS, **overrides}
    torch.manual_seed(settings["seed"])
    data = CocoBoxes(data_dir, train=True, augment=False, subset=settings["images"])
    images, targets = collate_detection([data[i] for i in range(settings["images"])])
    model = create_model(settings["model"], attention=attention, min_size=settings["min_size"],
                         max_size=settings["max_size"], **MODEL_OPTIONS)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"],
                                momentum=settings["momentum"])
    for step in range(settings["steps"]):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"] * min(1.0, (step + 1) / settings["warmup_steps"])
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_grad_norm"])
        optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    ids = [int(t["image_id"]) for t in targets]
    metrics = coco_evaluate(str(coco_paths(data_dir, train=True)[1]),
                            to_coco_results(outputs, ids), ids)
    return {"settings": settings, "attention": attention, "final_loss": float(loss.detach()),
            "metrics": {k: float(v) for k, v in metrics.items()}}


def markdown(records: list[dict[str, Any]]) -> str:
    """docs/detection.md's generated block ``detection-check``."""
    if not records:
        return "*No committed record yet: run `python benchmarks/detection_check.py`.*\n"
    s = records[0]["settings"]
    lines = [f"`{s['model']}` from scratch, {s['images']} coco128 training images at "
             f"{s['min_size']} / {s['max_size']} px, {s['steps']} SGD steps, evaluated on the same "
             "images (`benchmarks/records/detection_check/`):", "",
             "| attention | final loss | AP | AP50 | AP75 |", "|---|---:|---:|---:|---:|"]
    for r in records:
        m = r["metrics"]
        lines.append(f"| {r['attention']} | {r['final_loss']:.3f} | {m['AP']:.1f} | "
                     f"{m['AP50']:.1f} | {m['AP75']:.1f} |")
    return "\n".join(lines) + "\n"


def load_records(folder: Path = RECORDS) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["none", "se", "stepnet"])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--write", action="store_true",
                        help="also rewrite docs/detection.md's generated block")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from stepnet.atomic import atomic_write
    from stepnet.engine.records import code_version
    from stepnet.studies import replace_generated_block

    if not args.data_dir.is_dir():
        raise SystemExit(f"no coco128 at {args.data_dir} (see ../shared/data/README.md)")
    args.records.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        record = overfit(args.data_dir, variant)
        record.update(code=code_version(), torch=torch.__version__,
                      machine=platform.machine(), threads=torch.get_num_threads())
        text = (json.dumps(record, indent=1) + "\n").encode()
        atomic_write(args.records / f"{variant}.json", lambda handle: handle.write(text))
        m = record["metrics"]
        print(f"{variant:<8} loss {record['final_loss']:.3f}  AP {m['AP']:.1f}  "
              f"AP50 {m['AP50']:.1f}", flush=True)
    text = markdown(load_records(args.records))
    if args.write:
        replace_generated_block(ROOT / "docs" / "detection.md", "detection-check", text)
    print(text)


if __name__ == "__main__":
    main()
