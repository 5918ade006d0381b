"""Released weights: safetensors files with a manifest of sha256 hashes, loaded by name.

``create_model("resnet20", preact=False, attention="se", pretrained="cifar10")`` finds the
manifest entry of that architecture and tag (``pretrained=True``: the model's default tag, the
first one listed for it), verifies the file's sha256, builds the model with the entry's data
settings (classes, channels, input size) and loads the weights strictly. ``pretrained`` may
also be a path to a ``.safetensors`` file written by :func:`save_weights`, or a hub id
``hf-hub:OWNER/REPO/FILE`` (read with ``huggingface_hub``, from its cache when offline).

The manifest (``manifest.json``) and the files live in the package's ``weights/`` folder, so
they work offline on a fresh install; ``$STEPNET_WEIGHTS`` names another folder with the same
layout (a cache, or weights hosted elsewhere and downloaded there). Each entry::

    {"model": "resnet20", "tag": "cifar10", "kwargs": {"preact": false, "attention": "se"},
     "data_kwargs": {"num_classes": 10, "in_chans": 3, "input_size": 32},
     "file": "resnet20-post-se-cifar10.safetensors", "sha256": "...", "record": "...",
     "test_acc1": 91.23}
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = "manifest.json"
# Keywords that describe the data the weights were trained on, filled from the entry.
DATA_KEYS = ("num_classes", "in_chans", "input_size")
# Builder defaults that an entry or a call may state or leave out alike.
DEFAULTS: dict[str, Any] = {"attention": "none", "attention_options": {},
                            "attention_blocks": None, "norm": None, "preact": True}


def weights_dir() -> Path:
    """Where released weights are looked for: ``$STEPNET_WEIGHTS`` or the package's folder."""
    return Path(os.environ.get("STEPNET_WEIGHTS") or WEIGHTS_DIR)


def manifest(folder: Path | None = None) -> list[dict[str, Any]]:
    """The entries of the weights manifest (empty when there is none)."""
    path = (folder or weights_dir()) / MANIFEST
    if not path.is_file():
        return []
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not a weights manifest (a JSON list of entries)")
    return entries


def _architecture(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items()
            if k not in DATA_KEYS and not (k in DEFAULTS and DEFAULTS[k] == v)}


def _describe(kwargs: dict[str, Any]) -> str:
    shown = _architecture(kwargs)
    return " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(shown.items())) or "defaults"


def find_entry(name: str, kwargs: dict[str, Any], tag: str | bool) -> dict[str, Any]:
    """The manifest entry of model ``name`` built with ``kwargs`` and weights ``tag``
    (``True``: the default weights of that architecture -- the entry marked ``"default":
    true``, else its first); ``ValueError`` listing what has weights otherwise."""
    entries = manifest()
    released = sorted({e["model"] for e in entries})
    mine = [e for e in entries if e["model"] == name]
    if not mine:
        raise ValueError(f"no released weights for {name!r}; models with weights: "
                         f"{', '.join(released) or 'none yet'}")
    if tag is True:
        fitting = [e for e in mine if _architecture(e["kwargs"]) == _architecture(kwargs)]
        marked = [e for e in fitting if e.get("default")]
        tag = (marked or fitting or mine)[0]["tag"]
    tagged = [e for e in mine if e["tag"] == tag]
    if not tagged:
        raise ValueError(f"no weights tagged {tag!r} for {name!r}; its tags: "
                         f"{', '.join(sorted({e['tag'] for e in mine}))}")
    wanted = _architecture(kwargs)
    for entry in tagged:
        if _architecture(entry["kwargs"]) == wanted:
            return entry
    raise ValueError(f"no {tag!r} weights for {name!r} with {_describe(kwargs)}; released: "
                     + "; ".join(_describe(e["kwargs"]) for e in tagged))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_file(spec: str) -> Path:
    """``hf-hub:OWNER/REPO/FILE`` -> a local path (huggingface_hub's download, or its cache)."""
    parts = spec[len("hf-hub:"):].split("/")
    if len(parts) < 3:
        raise ValueError(f"a hub id is hf-hub:OWNER/REPO/FILE, got {spec!r}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ValueError("weights from a hub need the huggingface_hub package: "
                         "pip install huggingface_hub") from None
    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))


def read_weights(path: Path, sha256: str | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a safetensors weights file, after checking its sha256 when
    one is expected. Nothing in the file can run code."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if sha256 is not None:
        found = sha256_of(path)
        if found != sha256:
            raise ValueError(f"{path} has sha256 {found}, but the manifest expects {sha256}: "
                             f"the file is damaged or not the released one; delete it and "
                             f"reinstall (or download it again)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path} is not a safetensors weights file ({error})") from None
    return state, metadata


def save_weights(model: nn.Module, path: str | Path, name: str, kwargs: dict[str, Any]) -> str:
    """Write ``model``'s state dict as safetensors with its architecture (``name``, ``kwargs``)
    as metadata; returns the file's sha256."""
    from safetensors.torch import save

    from ..atomic import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": "stepnet-weights-v1", "model": name,
                                 "kwargs": json.dumps(kwargs, sort_keys=True)})
    atomic_write(path, lambda handle: handle.write(data))
    return hashlib.sha256(data).hexdigest()


def load_pretrained(name: str, kwargs: dict[str, Any], pretrained: Any) -> nn.Module:
    """The model ``name`` with released weights (see the module docs)."""
    from .registry import create_model

    expected: str | None = None
    if isinstance(pretrained, (str, Path)) and (str(pretrained).endswith(".safetensors")
                                                or str(pretrained).startswith("hf-hub:")):
        path = _hub_file(str(pretrained)) if str(pretrained).startswith("hf-hub:") \
            else Path(pretrained)
        state, metadata = read_weights(path)
        saved = json.loads(metadata.get("kwargs", "{}"))
        if metadata.get("model") not in (None, name):
            raise ValueError(f"{path} holds weights of {metadata['model']} "
                             f"{_describe(saved)}, not of {name} {_describe(kwargs)}")
        build = {**{k: saved[k] for k in DATA_KEYS if k in saved}, **kwargs}
    elif pretrained is True or isinstance(pretrained, str):
        entry = find_entry(name, kwargs, pretrained)
        path, expected = weights_dir() / entry["file"], entry["sha256"]
        state, metadata = read_weights(path, expected)
        build = {**entry["data_kwargs"], **kwargs}
    else:
        raise ValueError(f"pretrained takes True, a tag, a .safetensors path or a hub id "
                         f"(hf-hub:OWNER/REPO/FILE), not {pretrained!r}")
    model = create_model(name, **build)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise ValueError(f"{path} holds weights of {metadata.get('model', '?')} "
                         f"{_describe(json.loads(metadata.get('kwargs', '{}')))}, which do not "
                         f"fit {name} {_describe(build)}: {first}") from None
    return model
