"""Command line: list methods, apply a method or a pipeline, run a sweep of configurations.

Examples::

    python -m compression --help
    python -m compression methods
    python -m compression apply --model demo --dataset digits --method prune-unstructured --set sparsity=0.5
    python -m compression apply --model model.pt --arch demo-cnn --dataset digits \\
        --method prune-unstructured --set sparsity=0.8 --method cluster --set k=16
    python -m compression sweep configs.yaml

A sweep file (YAML or JSON) holds ``model``, ``arch``, ``dataset`` (each overridable on the command line)
and ``variants``: a list whose items are a method config (``{method: cluster, k: 16}``), a list of configs
(a pipeline), or ``{name: ..., steps: [...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from compression.registry import (
    MethodConfig,
    config_from_dict,
    config_from_strings,
    get_method,
    list_methods,
)


def describe_methods() -> str:
    """Every registered method with its parameters (name, type, default, help)."""
    lines = []
    for cls in list_methods():
        lines.append(f"{cls.method}  —  {cls.label}")
        if cls.description:
            lines.extend("    " + s for s in textwrap.wrap(cls.description, 96))
        for fi in cls.fields_info():
            choices = f" {{{', '.join(map(str, fi.choices))}}}" if fi.choices else ""
            lines.append(f"    {fi.name}={fi.default!r} ({fi.type}{choices}): {fi.help}")
        lines.append("")
    return "\n".join(lines)


class _Step(argparse.Action):
    """Keep --method and --set in command-line order so each --set belongs to the --method before it."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        steps = getattr(ns, "steps", None) or []
        if option_string == "--method":
            steps.append((values, []))
        else:
            if not steps:
                parser.error("--set must follow a --method")
            steps[-1][1].extend(values)
        ns.steps = steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compression", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Compress a model into measured variants (records as JSON).",
                                epilog="methods and parameters:\n\n" + describe_methods())
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list methods and their parameters")

    def common(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument("--model", required=required, help="workspace model id, a state-dict file, or 'demo'")
        sp.add_argument("--arch", default=None, help="architecture of --model (default demo-cnn)")
        sp.add_argument("--dataset", default=None, help="dataset key (default digits)")
        sp.add_argument("--workspace", default=None, help="workspace folder (default $NNLAB_WORKSPACE)")
        sp.add_argument("--device", default="cpu", help="device for fine-tuning / calibration")
        sp.add_argument("--repeats", type=int, default=20, help="latency repeats at batch 1")
        sp.add_argument("--quiet", action="store_true", help="no progress on stderr")

    ap = sub.add_parser("apply", help="apply a method or a pipeline and print the record")
    common(ap, True)
    ap.add_argument("--method", action=_Step, dest="steps", help="method key (repeat for a pipeline)")
    ap.add_argument("--set", action=_Step, dest="steps", nargs="+", metavar="KEY=VALUE",
                    help="parameter of the preceding --method")
    ap.add_argument("--name", default=None, help="display name of the variant")
    sp = sub.add_parser("sweep", help="apply every configuration of a YAML/JSON file; one record each")
    sp.add_argument("file", help="YAML or JSON sweep file")
    common(sp, False)
    return p


def _progress(quiet: bool):  # noqa: ANN202
    if quiet:
        return None

    def show(msg: str, frac: float) -> None:
        print(f"[{frac:6.1%}] {msg}", file=sys.stderr, flush=True)

    return show


def _load(model_ref: str, arch: str, dataset: str, ws):  # noqa: ANN001, ANN202
    from nnlab.base import ensure_demo
    from nnlab.data import load_dataset
    from nnlab.models import create_model, load_into, read_state_dict_file

    data = load_dataset(dataset)
    if model_ref == "demo":
        model, rec, _ = ensure_demo(data, ws, arch=arch)
        return model, rec.id, data
    c, h, w = data.input_shape
    if Path(model_ref).is_file():
        model = load_into(create_model(arch, c, data.num_classes, (h, w)), read_state_dict_file(model_ref))
        return model, Path(model_ref).stem, data
    if ws.has_model(model_ref):
        model = load_into(create_model(arch, c, data.num_classes, (h, w)), ws.load_model_state(model_ref))
        return model, model_ref, data
    raise SystemExit(f"error: --model {model_ref!r} is neither a file, a workspace model id, nor 'demo'")


def _variant_configs(item: Any) -> tuple[str | None, list[MethodConfig]]:
    if isinstance(item, dict) and "steps" in item:
        return item.get("name"), [config_from_dict(d) for d in item["steps"]]
    if isinstance(item, list):
        return None, [config_from_dict(d) for d in item]
    if isinstance(item, dict):
        d = dict(item)
        name = d.pop("name", None)
        return name, [config_from_dict(d)]
    raise ValueError(f"a sweep variant must be a config, a list of configs or {{steps: [...]}}, got {item!r}")


def read_sweep(path: str | Path) -> dict:
    """Parse a sweep file (YAML or JSON); a bare list is taken as ``variants``."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        doc = json.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text)
    if isinstance(doc, list):
        doc = {"variants": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("variants"), list) or not doc["variants"]:
        raise ValueError(f"{path}: expected a list of variants (or a mapping with 'variants')")
    return doc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        print(describe_methods())
        return 0
    from compression.variant import make_variant
    from nnlab.workspace import Workspace

    ws = Workspace(args.workspace)
    try:
        if args.command == "apply":
            if not getattr(args, "steps", None):
                raise ValueError("give at least one --method")
            configs = [config_from_strings(get_method(m).method, sets) for m, sets in args.steps]
            arch, dataset = args.arch or "demo-cnn", args.dataset or "digits"
            model, parent, data = _load(args.model, arch, dataset, ws)
            rec = make_variant(model, parent, arch, configs, data, ws, name=args.name,
                               progress=_progress(args.quiet), device=args.device, latency_repeats=args.repeats)
            print(rec.to_json())
            return 0
        doc = read_sweep(args.file)
        variants = [_variant_configs(v) for v in doc["variants"]]  # validate all before any work
        arch = args.arch or doc.get("arch", "demo-cnn")
        dataset = args.dataset or doc.get("dataset", "digits")
        model_ref = args.model or doc.get("model", "demo")
        model, parent, data = _load(str(model_ref), arch, dataset, ws)
        out = []
        for i, (name, configs) in enumerate(variants, 1):
            if not args.quiet:
                print(f"variant {i}/{len(variants)}: {' → '.join(c.method for c in configs)}", file=sys.stderr)
            rec = make_variant(model, parent, arch, configs, data, ws, name=name, progress=_progress(args.quiet),
                               device=args.device, latency_repeats=args.repeats)
            out.append(rec.to_dict())
        print(json.dumps(out, indent=2, sort_keys=True, allow_nan=False))
        return 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
