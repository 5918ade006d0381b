"""``stepnet detect``: pictures of a detection checkpoint's boxes on images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file, write_png
    from torchvision.utils import draw_bounding_boxes

    from ..engine import load_checkpoint, model_from_checkpoint, resolve_device
    from .common import check_writable

    if not 0 <= args.score <= 1:
        raise ValueError(f"--score must be in [0, 1], got {args.score}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise ValueError(f"no image at {', '.join(missing)}")
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint, task="detection").eval()
    device = resolve_device(args.device)
    model.to(device)
    names = {int(k): v for k, v in
             (checkpoint.get("task_state") or {}).get("categories", {}).items()}
    output = Path(args.output)
    check_writable(output)
    written = []
    for path in args.images:
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise ValueError(f"{path} is not an image torchvision can read: {error}") from None
        with torch.no_grad():
            found = model([image.float().div(255).to(device)])[0]
        keep = found["scores"] >= args.score
        boxes, labels, scores = (found[k][keep].cpu() for k in ("boxes", "labels", "scores"))
        captions = [f"{names.get(int(c), f'class {int(c)}')} {s:.2f}"
                    for c, s in zip(labels, scores)]
        picture = draw_bounding_boxes(image, boxes, captions, colors="red", width=2)
        target = output / f"{Path(path).stem}_detections.png"
        write_png(picture, str(target))
        written.append({"image": str(path), "picture": str(target), "boxes": len(boxes),
                        "detections": [{"label": n, "box": [round(v, 1) for v in b.tolist()]}
                                       for n, b in zip(captions, boxes)]})
    print(json.dumps(written))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "detect", help="draw a detection checkpoint's boxes on images",
        description="Run a detection checkpoint on images and write each with its predicted "
        "boxes and class names drawn (torchvision's draw_bounding_boxes) as PNG.")
    parser.add_argument("checkpoint", help="a detection checkpoint file or run directory")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG)")
    parser.add_argument("--output", default="detections", help="folder for the pictures")
    parser.add_argument("--score", type=float, default=0.5, help="minimum score drawn")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)
