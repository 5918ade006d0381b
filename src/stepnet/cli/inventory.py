"""``stepnet models`` and ``stepnet attention``: what the library provides."""
from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from ..attention import attention_options, get_attention_class, list_attention
from ..models import create_model, list_models

# The StepNet paper's Table 1 "#P(M)" column for ResNet-164 (CIFAR-10, CIFAR-100), shown beside
# our counts for reference only: the counts themselves are computed from the built models.
PAPER_TABLE1_PARAMS_M = {
    "none": (1.70, 1.73), "se": (1.91, 1.93), "cbam": (1.92, 1.94), "eca": (1.70, 1.73),
    "sem": (1.95, 1.97), "srm": (1.74, 1.76), "fca": (1.91, 1.93), "iebn": (1.73, 1.75),
    "stepnet": (1.75, 1.77),
}


# The models the paper's Table 1 measured (ResNet-164, either activation layout: the counts
# differ by a few BatchNorms); other backbones show no paper column.
PAPER_MODELS = ("resnet164",)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_table(model: str = "resnet164") -> list[dict[str, Any]]:
    """One row per attention module (and ``norm="iebn"``): parameter counts for 10 and 100
    classes, with the paper's Table 1 figures where it has them."""
    variants = [(name, {"attention": name}) for name in list_attention()]
    variants.append(("iebn", {"norm": "iebn"}))
    rows = []
    for label, kwargs in variants:
        counts = [count_parameters(create_model(model, num_classes=c, **kwargs)) for c in (10, 100)]
        paper = PAPER_TABLE1_PARAMS_M.get(label, (None, None)) if model in PAPER_MODELS \
            else (None, None)
        rows.append({"variant": label, "params_10": counts[0], "params_100": counts[1],
                     "paper_m_10": paper[0], "paper_m_100": paper[1]})
    return rows


def format_parameter_table(rows: list[dict[str, Any]], model: str) -> str:
    """An aligned table; the paper's column only for the model the paper measured."""
    def paper(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    show_paper = model in PAPER_MODELS
    title = (f"{model}: parameters (paper = StepNet Table 1 #P(M), for reference)" if show_paper
             else f"{model}: parameters (the paper's Table 1 measured resnet164 only)")
    head = f"{'variant':<9} {'10 classes':>11} {'M':>6}" + (f" {'paper':>6}" if show_paper else "")
    head += "   " + f"{'100 classes':>11} {'M':>6}" + (f" {'paper':>6}" if show_paper else "")
    lines = [title, head]
    for r in rows:
        line = f"{r['variant']:<9} {r['params_10']:>11,} {r['params_10'] / 1e6:>6.2f}"
        line += f" {paper(r['paper_m_10']):>6}" if show_paper else ""
        line += f"   {r['params_100']:>11,} {r['params_100'] / 1e6:>6.2f}"
        line += f" {paper(r['paper_m_100']):>6}" if show_paper else ""
        lines.append(line)
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> int:
    if args.params:
        print(format_parameter_table(parameter_table(args.model), args.model))
        return 0
    for name in list_models():
        print(name)
    return 0


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]


def attention_table() -> str:
    """Name, token support, options and the definition of every step-size module, aligned;
    the definition wraps under its own column."""
    import shutil
    import textwrap

    rows = [(name, "yes" if get_attention_class(name).supports_tokens else "no",
             ", ".join(attention_options(name)) or "-",
             first_sentence(get_attention_class(name).__doc__)) for name in list_attention()]
    header = ("module", "tokens", "options", "definition")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    indent = sum(widths) + 3 * 2
    width = max(shutil.get_terminal_size((100, 20)).columns - indent, 30)
    lines = []
    for row in [header] + rows:
        wrapped = textwrap.wrap(row[3], width) or [""]
        lines.append("  ".join(v.ljust(w) for v, w in zip(row[:3], widths)) + "  " + wrapped[0])
        lines += [" " * indent + more for more in wrapped[1:]]
    return "\n".join(lines)


def run_attention(args: argparse.Namespace) -> int:
    print(attention_table())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list the registered models",
                            description="List the registered models, or with --params the "
                            "parameter count of every attention variant on one backbone.")
    models.add_argument("--params", action="store_true",
                        help="print the parameter table of every attention variant")
    models.add_argument("--model", default="resnet164", choices=list_models(),
                        help="backbone for --params (default: resnet164)")
    models.set_defaults(run=run_models)

    attention = sub.add_parser("attention", help="list the attention (step-size) modules",
                               description="List the attention modules and their options.")
    attention.set_defaults(run=run_attention)
