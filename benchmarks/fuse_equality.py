"""Fused against the previous default, bit for bit: logits, gradients, buffers, evaluation and
the stiffness recorder's statistics of 40 models, from one commit and from another.

    # at the old commit (its default was fused), then at this one with --fuse
    PYTHONPATH=<old checkout>/src python benchmarks/fuse_equality.py snapshot old.pt
    python benchmarks/fuse_equality.py snapshot new.pt --fuse
    python benchmarks/fuse_equality.py compare old.pt new.pt [--output JSON]

A snapshot is a local torch.save file of tensors this script wrote itself (never committed);
``compare`` loads it weights-only and writes which models are bit-equal and, for the others,
which entries differ and by how much.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

import stepnet

ROOT = Path(__file__).resolve().parents[1]
CASES: list = []
for preact in (False, True):
    for att in ["none", "se", "eca", "srm", "fca", "stepnet", "cbam", "sge", "ie", "sem"]:
        CASES.append(("resnet20", dict(preact=preact, attention=att), 32))
for att in ["none", "se", "stepnet", "srm", "eca"]:
    CASES.append(("resnet164", dict(preact=True, attention=att), 32))
    CASES.append(("resnet164", dict(preact=False, attention=att), 32))
for att in ["none", "se", "stepnet", "fca"]:
    CASES.append(("resnet50", dict(attention=att), 64))
for att in ["none", "se", "stepnet"]:
    CASES.append(("vit_cifar_tiny", dict(attention=att), 32))
CASES.append(("resnet20", dict(preact=False, attention="stepnet", norm="iebn"), 32))
CASES.append(("resnet20", dict(preact=False, attention="stepnet", drop_path_rate=0.3), 32))
CASES.append(("resnet20", dict(preact=False, attention="stepnet",
                                attention_options={"input": "x"}), 32))


def snapshot(out: Path, fuse: bool) -> None:
    torch.set_num_threads(1)
    results = {}
    for name, kw, size in CASES:
        torch.manual_seed(0)
        m = stepnet.create_model(name, num_classes=10, **kw)
        if fuse:
            from stepnet.fast import fuse as fuse_model
            m = fuse_model(m)
        torch.manual_seed(1)
        x = torch.randn(8, 3, size, size)
        y = torch.randint(0, 10, (8,))
        m.train()
        r = {}
        for step in range(2):
            logits = m(x)
            loss = F.cross_entropy(logits, y)
            m.zero_grad()
            loss.backward()
            r[f"train_logits{step}"] = logits.detach().clone()
            r[f"grads{step}"] = {k: p.grad.clone() for k, p in m.named_parameters()
                                 if p.grad is not None}
            with torch.no_grad():
                for p in m.parameters():
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-0.1)
        r["buffers"] = {k: b.clone() for k, b in m.named_buffers()}
        m.eval()
        with torch.no_grad():
            r["eval_logits"] = m(x)
        with torch.inference_mode():
            r["infer_logits"] = m(x).clone()
        if "vit" not in name:
            from stepnet.stiffness.recorder import TrajectoryRecorder
            with TrajectoryRecorder(m) as rec, torch.inference_mode():
                m(x)
            t = rec.trajectory()
            r["nsi"], r["nsi_step"] = t.nsi.clone(), t.nsi_step.clone()
            r["state"] = t.state_norm.clone()
        results[f"{name} {sorted(kw.items())}"] = r
        print(name, kw, float(r["eval_logits"].sum()), flush=True)
    torch.save(results, out)


def compare(old: Path, new: Path) -> dict:
    a = torch.load(old, weights_only=True)
    b = torch.load(new, weights_only=True)
    differences = []

    def walk(x, y, path):
        if isinstance(x, dict):
            for k in sorted(set(x) | set(y)):
                if k not in x or k not in y:
                    differences.append({"entry": f"{path}/{k}", "max_abs": None})
                else:
                    walk(x[k], y[k], f"{path}/{k}")
            return
        same = (x.shape == y.shape and torch.equal(torch.isnan(x), torch.isnan(y))
                and torch.equal(torch.nan_to_num(x, 0.0), torch.nan_to_num(y, 0.0)))
        if not same:
            d = ((x.double() - y.double()).abs().nan_to_num().max().item()
                 if x.shape == y.shape else None)
            differences.append({"entry": path, "max_abs": d})

    for case in sorted(set(a) | set(b)):
        if case in a and case in b:
            walk(a[case], b[case], case)
        else:
            differences.append({"entry": case, "max_abs": None})
    by_model: dict[str, dict] = {}
    for d in differences:
        model, _, entry = d["entry"].partition("/")
        row = by_model.setdefault(model, {"entries": 0, "max_abs": 0.0, "kinds": set()})
        row["entries"] += 1
        row["max_abs"] = max(row["max_abs"], d["max_abs"] or float("inf"))
        row["kinds"].add(entry.split("/")[0])
    for row in by_model.values():
        row["kinds"] = sorted(row["kinds"])
    return {"models": len(a), "identical": sorted(set(a) - set(by_model)),
            "differing": by_model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    snap = commands.add_parser("snapshot")
    snap.add_argument("out", type=Path)
    snap.add_argument("--fuse", action="store_true", help="stepnet.fast.fuse each model")
    comp = commands.add_parser("compare")
    comp.add_argument("old", type=Path)
    comp.add_argument("new", type=Path)
    comp.add_argument("--output", type=Path,
                      default=ROOT / "benchmarks" / "results" / "fuse_equality.json")
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.out, args.fuse)
        return
    result = compare(args.old, args.new)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['models']} models, {len(result['identical'])} bit-equal")
    for model, row in result["differing"].items():
        print(f"  {model}: {row['entries']} entries differ (max |difference| "
              f"{row['max_abs']:.3g}): {', '.join(row['kinds'])}")


if __name__ == "__main__":
    main()
