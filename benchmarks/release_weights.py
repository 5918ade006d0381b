"""Release a study's final weights into the package (``src/stepnet/weights``).

For each chosen run: rebuild its model from ``checkpoints/last.pt`` (the final weights the
study's record describes), evaluate it on the 5,000 test images and compare every
image's correctness with the committed record -- a file that fails this check is never
written -- then write the safetensors file and its manifest entry (sha256, the record it
reproduces, its test top-1 as computed here).

    python benchmarks/release_weights.py --runs /path/to/runs/cifar10_study --arms none se
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg"
RECORDS = ROOT / "benchmarks" / "records" / "cifar10_study"


def test_correctness(model: torch.nn.Module, data_dir: Path) -> np.ndarray:
    from stepnet.data import build_dataset

    test = build_dataset("imagefolder", data_dir, train=False, cache_images=True)
    hits = []
    model.eval()
    with torch.no_grad():
        for images, labels in DataLoader(test, batch_size=500):
            hits.append(model(images).topk(1, dim=1).indices[:, 0] == labels)
    return torch.cat(hits).numpy()


def release(arm: str, seed: int, args: argparse.Namespace) -> dict:
    from stepnet.data.datasets import IMAGENET_MEAN, IMAGENET_STD
    from stepnet.engine import load_checkpoint, model_from_checkpoint
    from stepnet.engine.records import load_record, unpack_bits
    from stepnet.models.pretrained import DATA_KEYS, save_weights

    record_file = args.records / f"{arm}-seed{seed}{args.record_suffix}.json"
    record = load_record(record_file)
    checkpoint = load_checkpoint(args.runs / arm / f"seed{seed}" / "checkpoints" / "last.pt")
    if checkpoint["epoch"] + 1 != record["final"]["epoch"]:
        raise SystemExit(f"{arm} seed {seed}: the checkpoint holds epoch "
                         f"{checkpoint['epoch'] + 1}, the record {record['final']['epoch']}")
    model = model_from_checkpoint(checkpoint, task="classification", weights="raw")
    hits = test_correctness(model, args.data_dir)
    expected = unpack_bits(record["per_sample"]["test_correct"],
                           record["per_sample"]["test_images"])
    if not np.array_equal(hits, expected):
        raise SystemExit(f"{arm} seed {seed}: the weights disagree with the record on "
                         f"{int((hits != expected).sum())} test images; nothing written")
    spec = checkpoint["model"]
    kwargs = {k: v for k, v in spec["kwargs"].items() if k not in DATA_KEYS}
    data_kwargs = {k: v for k, v in spec["kwargs"].items() if k in DATA_KEYS}
    variant = "post" if kwargs.get("preact") is False else "pre"
    name = f"{spec['name']}-{variant}-{arm}-{args.tag}-s{seed}.safetensors"
    digest = save_weights(model, args.output / name, spec["name"], spec["kwargs"])
    return {"model": spec["name"], "tag": args.tag, "default": args.default, "kwargs": kwargs,
            "data_kwargs": data_kwargs, "file": name, "sha256": digest,
            "record": (str(record_file.resolve().relative_to(ROOT.resolve()))
                       if record_file.resolve().is_relative_to(ROOT.resolve())
                       else str(record_file)),
            "test_acc1": 100.0 * float(hits.mean()),
            # what the weights expect: the imagefolder pipeline's statistics, 32 px, no crop
            "data_config": {"input_size": [3, 32, 32], "mean": list(IMAGENET_MEAN),
                            "std": list(IMAGENET_STD), "crop_pct": 1.0},
            "trained": f"{record['study']['name']}, seed {seed}, commit "
                       f"{record['code'].get('commit', '?')[:10]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="the study's run folders")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--arms", nargs="+", default=["none", "se", "stepnet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="cifar10", help="the weights' tag (pretrained=TAG)")
    parser.add_argument("--record-suffix", default="",
                        help="records named <arm>-seed<k><suffix>.json (the pilot's: -e40)")
    parser.add_argument("--default", action=argparse.BooleanOptionalAction, default=True,
                        help="mark the entries as their architecture's pretrained=True weights "
                             "(--no-default for a pilot's)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "src" / "stepnet" / "weights")
    args = parser.parse_args()
    manifest_path = args.output / "manifest.json"
    entries = json.loads(manifest_path.read_text()) if manifest_path.is_file() else []
    for arm in args.arms:
        entry = release(arm, args.seed, args)
        entries = [e for e in entries if e["file"] != entry["file"]] + [entry]
        print(f"{entry['file']}: test top-1 {entry['test_acc1']:.2f} (matches the record "
              f"image by image), sha256 {entry['sha256'][:12]}")
    order = {"none": 0, "se": 1, "stepnet": 2}
    entries.sort(key=lambda e: (e["model"], order.get(e["kwargs"].get("attention"), 9),
                                e["file"]))
    manifest_path.write_text(json.dumps(entries, indent=1) + "\n")


if __name__ == "__main__":
    main()
