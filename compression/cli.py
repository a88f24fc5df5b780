"""Command line: list methods, apply a method or a pipeline, run a sweep of configurations.

Examples::

    python -m compression --help
    python -m compression methods
    python -m compression apply --model demo --dataset digits --method prune-unstructured --set sparsity=0.5
    python -m compression apply --model model.pt --arch demo-cnn --dataset digits \\
        --method prune-unstructured --set sparsity=0.8 --method cluster --set k=16
    python -m compression sweep configs.yaml
    python -m compression sweep configs.yaml --ray-address local          # on a local Ray
    python -m compression sweep configs.yaml --ray-address 10.0.0.5:6379  # on a Ray cluster
    python -m compression search --model demo --dataset digits --strategy nsga2 --budget 0.01 --trials 24

``--dataset`` takes a dataset key (digits, fashion-mnist …) or, as the sidebar does, a path under the allowed
roots (``NNLAB_ALLOWED_ROOTS``): a folder is read as an ImageFolder, a file as a CSV/JSON list of path,label.

Messages for people (the help, progress and errors on stderr) follow the language of ``--lang en|ru``, else of
the environment (``NNLAB_LANG``, ``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``); the JSON document on stdout
is the same in every language (keys and values untranslated).

stdout carries one JSON document and nothing else (``methods`` and ``--help`` print text): while a command
works, everything else bound for stdout, third-party progress bars and C libraries included, goes to stderr,
with the progress lines (``--quiet`` drops those).

A sweep file (YAML or JSON) holds ``model``, ``arch``, ``dataset`` (each overridable on the command line)
and ``variants``: a list whose items are a method config (``{method: cluster, k: 16}``), a list of configs
(a pipeline), or ``{name: ..., steps: [...]}``.

Sweeps and searches run their configurations as pieces (:func:`nnlab.jobs.pieces.map_tasks`): in-process by
default, on Ray with ``--ray-address`` ("local" starts a local Ray; ``NNLAB_RAY_ADDRESS`` does the same as
the flag). Variant ids are deterministic (``<sweep id>-<index>``), so rerunning a sweep reuses the records
it already wrote. On a cluster the workspace must be the same path on every node.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from compression.registry import (
    MethodConfig,
    config_from_dict,
    config_from_strings,
    get_method,
    list_methods,
    method_description,
    method_label,
)
from nnlab import i18n
from nnlab.i18n import _


def describe_methods() -> str:
    """Every registered method with its parameters (name, type, default, help)."""
    lines = []
    for cls in list_methods():
        lines.append(f"{cls.method}  —  {method_label(cls)}")
        if cls.description:
            lines.extend("    " + s for s in textwrap.wrap(method_description(cls), 96))
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
                parser.error(_("--set must follow a --method"))
            steps[-1][1].extend(values)
        ns.steps = steps


class OutputParser(argparse.ArgumentParser):
    """An ArgumentParser that prints its help and usage to ``out`` (None: ``sys.stdout`` when printed), so a caller
    that gives ``main`` its own stream never has to rebind the process-wide ``sys.stdout`` for argparse."""

    out: TextIO | None = None

    def print_help(self, file: TextIO | None = None) -> None:
        super().print_help(file or self.out)

    def print_usage(self, file: TextIO | None = None) -> None:
        super().print_usage(file or self.out)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter with its own words ("usage: ") in the current language."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, _("usage: ") if prefix is None else prefix)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser."""
    todo = [parser]
    while todo:
        p = todo.pop()
        yield p
        for action in p._subparsers._group_actions if p._subparsers else []:
            todo.extend(action.choices.values())


def printing_to(parser: argparse.ArgumentParser, out: TextIO) -> argparse.ArgumentParser:
    """``parser`` with it and every subcommand's parser printing help to ``out``; returns ``parser``."""
    for p in _parsers(parser):
        p.out = out
    return parser


def _translate_argparse(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse's own headings and the -h help in the current language (argparse translates them only through
    its own gettext domain, which nnlab does not ship)."""
    for p in _parsers(parser):
        p.formatter_class = _Formatter
        p._positionals.title = _("positional arguments")
        p._optionals.title = _("options")
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                action.help = _("show this help message and exit")
    return parser


def split_lang(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--lang X`` / ``--lang=X`` taken out of ``argv`` wherever it stands: (the language or None, the rest).

    Raises:
        SystemExit: ``--lang`` without a value or with an unsupported one (message on stderr, status 2).
    """
    lang, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a == "--lang" or a.startswith("--lang="):
            if a == "--lang":
                if i + 1 >= len(argv):
                    _die(_("--lang needs a value: {choices}").format(choices=", ".join(i18n.LANGUAGES)))
                value, i = argv[i + 1], i + 2
            else:
                value, i = a.split("=", 1)[1], i + 1
            if value.strip().lower() not in i18n.LANGUAGES:
                _die(_("--lang {value}: choose one of {choices}").format(value=value,
                                                                        choices=", ".join(i18n.LANGUAGES)))
            lang = value.strip().lower()
            continue
        rest.append(a)
        i += 1
    return lang, rest


def _die(message: str) -> None:
    print(_("error: {message}").format(message=message), file=sys.stderr, flush=True)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The parser, its texts in the current language (set it first: :func:`main` does)."""
    p = OutputParser(prog="python -m compression", formatter_class=_Formatter,
                     description=_("Compress a model into measured variants (records as JSON)."),
                     epilog=_("methods and parameters:") + "\n\n" + describe_methods())
    p.add_argument("--lang", choices=list(i18n.LANGUAGES), default=None,
                   help=_("language of the help and of the messages on stderr (default: from $LANG); the JSON on "
                          "stdout is the same in every language"))
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help=_("list methods and their parameters"))

    def common(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument("--model", required=required, help=_("workspace model id, a state-dict file, or 'demo'"))
        sp.add_argument("--arch", default=None, help=_("architecture of --model (default demo-cnn)"))
        sp.add_argument("--dataset", default=None,
                        help=_("dataset key (default digits), or the path of an ImageFolder or of a CSV/JSON list "
                               "under the allowed roots ($NNLAB_ALLOWED_ROOTS)"))
        sp.add_argument("--workspace", default=None, help=_("workspace folder (default $NNLAB_WORKSPACE)"))
        sp.add_argument("--device", default="cpu", help=_("device for fine-tuning / calibration"))
        sp.add_argument("--repeats", type=int, default=20, help=_("latency repeats at batch 1"))
        sp.add_argument("--quiet", action="store_true", help=_("no progress on stderr"))

    ap = sub.add_parser("apply", help=_("apply a method or a pipeline and print the record"))
    common(ap, True)
    ap.add_argument("--method", action=_Step, dest="steps", help=_("method key (repeat for a pipeline)"))
    ap.add_argument("--set", action=_Step, dest="steps", nargs="+", metavar="KEY=VALUE",
                    help=_("parameter of the preceding --method"))
    ap.add_argument("--name", default=None, help=_("display name of the variant"))

    def distributed_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--ray-address", default=None, metavar="ADDR",
                        help=_("run the configurations on Ray: 'local' starts a local Ray, else a cluster address "
                               "(default: $NNLAB_RAY_ADDRESS, else in-process)"))
        sp.add_argument("--threads", type=int, default=1, help=_("intra-op threads of each configuration"))
        sp.add_argument("--sweep-id", default=None,
                        help=_("prefix of the variant ids (default: a hash of the inputs)"))

    sp = sub.add_parser("sweep", help=_("apply every configuration of a YAML/JSON file; one record each"))
    sp.add_argument("file", help=_("YAML or JSON sweep file"))
    common(sp, False)
    distributed_flags(sp)
    se = sub.add_parser("search", help=_("search methods and levels; print the frontier within the budget"))
    common(se, False)
    distributed_flags(se)
    se.add_argument("--strategy", choices=["grid", "halving", "nsga2"], default="grid",
                    help=_("how candidates are chosen"))
    se.add_argument("--budget", type=float, default=0.01, help=_("largest accuracy drop (0.01 = one point)"))
    se.add_argument("--cost", default="size", choices=["size", "size_gzip", "latency", "latency32", "macs"],
                    help=_("the cost the frontier minimises"))
    se.add_argument("--candidates", default=None, help=_("grid/halving: JSON or YAML file of pipelines"))
    se.add_argument("--trials", type=int, default=24, help=_("nsga2: trials in all"))
    se.add_argument("--population", type=int, default=8, help=_("nsga2: trials per generation"))
    se.add_argument("--seed", type=int, default=0, help=_("seed of the search"))
    se.add_argument("--keep-all", action="store_true",
                    help=_("keep every measured variant, not only the frontier"))
    return _translate_argparse(p)


def _progress(quiet: bool):
    if quiet:
        return None

    def show(msg: str, frac: float) -> None:
        print(f"[{frac:6.1%}] {msg}", file=sys.stderr, flush=True)

    return show


def _data_ref(dataset: str) -> dict:
    """The dataset reference (:func:`nnlab.jobs.refs.data_ref`) that ``--dataset`` names, read as the sidebar reads it.

    A registered key names itself; anything else is a path under the allowed roots: a folder is an ImageFolder,
    a file a CSV/JSON list (the ``imagefolder`` and ``filelist`` sources check the roots again as they load).

    Raises:
        DatasetError: neither a key nor an existing path, or a path outside the allowed roots.
    """
    from nnlab.data.sets import DATASETS, DatasetError, check_allowed
    from nnlab.jobs import refs

    entry = DATASETS.get(dataset)
    if entry is not None and not entry.needs_path:
        return refs.data_ref(dataset)
    keys = ", ".join(k for k, e in DATASETS.items() if not e.needs_path)
    if entry is not None:
        raise DatasetError(_("--dataset {dataset}: give the path of the folder or list itself instead of the "
                             "key").format(dataset=dataset))
    if not Path(dataset).expanduser().exists():
        raise DatasetError(_("--dataset {dataset!r} is neither a dataset key ({keys}) nor an existing folder or "
                             "CSV/JSON list").format(dataset=dataset, keys=keys))
    path = check_allowed(dataset)
    return refs.data_ref("imagefolder" if path.is_dir() else "filelist", str(path))


def _load(model_ref: str, arch: str, dref: dict, ws):
    """The model, its id, and the dataset ``dref`` names (through the model's preprocessing when stored)."""
    from nnlab.base import ensure_demo
    from nnlab.data.sets import load_dataset
    from nnlab.models.registry import create_model, load_into, read_state_dict_file

    if ws.has_model(model_ref):  # a stored model is seen through its own preprocessing
        from nnlab.jobs import refs

        rec = ws.load_model_record(model_ref)
        pre = rec.extra.get("preprocessing") if rec is not None else None
        data = load_dataset(dref["key"], dref["path"], preprocessing=pre or None, workspace=ws.root)
        model, _rec = refs.load_model(model_ref, ws.root)
        return model, model_ref, data
    data = load_dataset(dref["key"], dref["path"], workspace=ws.root)
    if model_ref == "demo":
        model, rec, _data = ensure_demo(data, ws, arch=arch)
        return model, rec.id, data
    c, h, w = data.input_shape
    if Path(model_ref).is_file():
        model = load_into(create_model(arch, c, data.num_classes, (h, w)), read_state_dict_file(model_ref))
        return model, Path(model_ref).stem, data
    raise SystemExit(_("error: --model {model!r} is neither a file, a workspace model id, nor 'demo'").format(
        model=model_ref))


def _variant_configs(item: Any) -> tuple[str | None, list[MethodConfig]]:
    if isinstance(item, dict) and "steps" in item:
        return item.get("name"), [config_from_dict(d) for d in item["steps"]]
    if isinstance(item, list):
        return None, [config_from_dict(d) for d in item]
    if isinstance(item, dict):
        d = dict(item)
        name = d.pop("name", None)
        return name, [config_from_dict(d)]
    raise ValueError(_("a sweep variant must be a config, a list of configs or {{steps: [...]}}, got "
                       "{item!r}").format(item=item))


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
        raise ValueError(_("{path}: expected a list of variants (or a mapping with 'variants')").format(path=path))
    return doc


def _use_ray(args: argparse.Namespace) -> bool:
    """Start or attach Ray when asked (flag, else ``NNLAB_RAY_ADDRESS``); say where the pieces run."""
    from nnlab.jobs import pieces as distributed

    address = args.ray_address or distributed.ray_address()
    if not address:
        return False
    ex = distributed.ensure_ray(address)
    if not args.quiet:
        where = (_("Ray at {address}: {nodes} node(s), {cpus} CPUs").format(
            address=ex.address, nodes=ex.nodes, cpus=i18n.num(ex.cpus, "g")) if ex.kind == "ray"
                 else _("in-process ({reason})").format(reason=ex.reason))
        print(_("running on {where}").format(where=where), file=sys.stderr, flush=True)
    return ex.kind == "ray"


def _task_progress(quiet: bool, names: list[str]):
    if quiet:
        return None

    def show(i: int, msg: str, frac: float) -> None:
        print(f"[{i + 1}/{len(names)} {frac:6.1%}] {names[i]}: {msg}", file=sys.stderr, flush=True)

    return show


def _sweep(args: argparse.Namespace, ws) -> tuple[int, str]:
    from compression.search import drop_incomplete, measure_piece
    from compression.variant import describe_configs
    from nnlab.jobs import pieces as distributed
    from nnlab.records import Record

    doc = read_sweep(args.file)
    variants = [_variant_configs(v) for v in doc["variants"]]  # validate all before any work
    arch = args.arch or doc.get("arch", "demo-cnn")
    dataset = _data_ref(str(args.dataset or doc.get("dataset", "digits")))
    model_ref = str(args.model or doc.get("model", "demo"))
    model, parent, data = _load(model_ref, arch, dataset, ws)
    mref = distributed.model_ref(model, parent, arch, ws.root)
    if Path(model_ref).is_file():
        mref["path"] = str(Path(model_ref).resolve())
    dref = distributed.dataset_ref(data, key=dataset["key"], path=dataset["path"])
    configs = [[c.to_dict() for c in cfgs] for _, cfgs in variants]
    kwargs = {"latency_repeats": args.repeats, "device": str(args.device)}
    who = {k: mref[k] for k in ("model_id", "arch", "weights_hash")}
    sid = args.sweep_id or distributed.stable_id(who, dref["fingerprint"], configs, args.threads, kwargs)
    names = [name or describe_configs(cfgs) for name, cfgs in variants]
    pieces = [{"workspace": str(ws.root), "model": mref, "dataset": dref, "configs": c, "variant_id": f"{sid}-{i:03d}",
               "name": n, "sweep_id": sid, "variant_kwargs": kwargs} for i, (c, n) in enumerate(zip(configs, names))]
    use_ray = _use_ray(args)
    live = {} if use_ray else {distributed.ref_key(dref): data, distributed.ref_key(mref): model}
    with distributed.primed(live):
        results = distributed.map_tasks(measure_piece, pieces, _task_progress(args.quiet, names), use_ray=use_ray,
                                        threads_per_task=args.threads, cleanup=drop_incomplete)
    out = []
    for r in results:
        if r.ok:
            out.append(Record.from_dict(r.value["record"]).to_dict())
        else:
            print(_("error: variant {number} ({name}) {status}: {error}").format(
                number=r.index + 1, name=names[r.index], status=r.status, error=r.error), file=sys.stderr)
    return 0 if len(out) == len(results) else 1, json.dumps(out, indent=2, sort_keys=True, allow_nan=False)


def _search(args: argparse.Namespace, ws) -> tuple[int, str]:
    from compression.search import search

    arch, dataset = args.arch or "demo-cnn", _data_ref(args.dataset or "digits")
    candidates = read_sweep(args.candidates)["variants"] if args.candidates else None
    if candidates is not None:
        candidates = [[c.to_dict() for c in _variant_configs(v)[1]] for v in candidates]
    model, parent, data = _load(str(args.model or "demo"), arch, dataset, ws)
    base = ws.load_model_record(parent) or ws.load_variant(parent)
    if base is None:
        raise ValueError(_("--model {model!r} has no record in the workspace; search needs its measured "
                           "base").format(model=parent))
    res = search(model, base, data, ws, budget=args.budget, candidates=candidates, strategy=args.strategy,
                 cost=args.cost, keep_all=args.keep_all, seed=args.seed, progress=_progress(args.quiet),
                 use_ray=_use_ray(args), threads=args.threads, sweep_id=args.sweep_id, trials=args.trials,
                 population=args.population, latency_repeats=args.repeats, device=str(args.device))
    return 0, json.dumps({"sweep_id": res.sweep_id, "executor": res.executor, "tried": res.tried,
                          "frontier": [r.to_dict() for r in res.frontier]}, indent=2, sort_keys=True, default=str)


def _apply(args: argparse.Namespace, ws) -> tuple[int, str]:
    from compression.variant import make_variant

    if not getattr(args, "steps", None):
        raise ValueError(_("give at least one --method"))
    configs = [config_from_strings(get_method(m).method, sets) for m, sets in args.steps]
    arch = args.arch or "demo-cnn"
    model, parent, data = _load(args.model, arch, _data_ref(args.dataset or "digits"), ws)
    rec = make_variant(model, parent, arch, configs, data, ws, name=args.name, progress=_progress(args.quiet),
                       device=args.device, latency_repeats=args.repeats)
    return 0, rec.to_json()


def _flush_all(*streams: Any) -> None:
    for s in streams:
        with contextlib.suppress(Exception):  # a closed or odd stream is no reason to lose the others
            s.flush()
    with contextlib.suppress(Exception):  # C stdio buffers (printf from native libraries) too
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout while the block runs to stderr: ``sys.stdout`` and file descriptor 1
    alike, so third-party progress bars, loggers bound to the old ``sys.stdout`` and C libraries too.

    Both are restored afterwards, pending buffers flushed to stderr first.
    """
    before = sys.stdout
    _flush_all(sys.stdout, sys.stderr)
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedding host): Python's sys.stdout only
        saved = None
    if saved is not None:
        try:
            os.dup2(2, 1)
        except OSError:
            os.close(saved)
            saved = None
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        _flush_all(before, sys.stdout, sys.stderr)
        sys.stdout = before
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _run(args: argparse.Namespace) -> tuple[int, str | None]:
    """The command's exit code and its JSON document (None after an error, which is reported on stderr)."""
    from nnlab.workspace import Workspace

    try:
        ws = Workspace(args.workspace)
        if args.command == "apply":
            return _apply(args, ws)
        if args.command == "search":
            return _search(args, ws)
        return _sweep(args, ws)
    except (ValueError, OSError) as exc:
        print(_("error: {message}").format(message=exc), file=sys.stderr, flush=True)
        return 2, None


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run one command; its JSON document (or the method list, or the help) is all that goes to ``stdout``.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``). ``--lang en|ru`` anywhere in them sets the language of
            the help and of the messages (default: the environment's, :func:`nnlab.i18n.language_from_env`).
        stdout: Where the document goes (default: ``sys.stdout`` as it is at the call). While the command works
            everything else bound for stdout goes to stderr (:func:`stdout_to_stderr`); the document is written
            after that, so this may be the process's own stdout.

    Returns:
        0 on success, 1 when some sweep variants failed, 2 for bad input (with a message on stderr).
    """
    out = stdout if stdout is not None else sys.stdout
    lang, argv = split_lang(list(sys.argv[1:] if argv is None else argv))
    with i18n.language(lang or i18n.language_from_env()):
        args = printing_to(build_parser(), out).parse_args(argv)
        if args.command == "methods":
            doc: str | None = describe_methods()
            rc = 0
        else:
            with stdout_to_stderr():
                rc, doc = _run(args)
    if doc is not None:
        out.write(doc + "\n")
        out.flush()
    return rc
