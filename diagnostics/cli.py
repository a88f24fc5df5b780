"""``python -m diagnostics report``: a model's one-file report (HTML, and a PDF when a browser can print).

The same report the pages build (:func:`diagnostics.tasks.build_report`). stdout carries only the JSON summary;
progress goes to stderr. The options that name the model and the data are the compression CLI's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from compression.cli import OutputParser, _data_ref, _load, _progress, printing_to, stdout_to_stderr
from nnlab import i18n


def build_parser() -> argparse.ArgumentParser:
    p = OutputParser(prog="python -m diagnostics", description="Diagnose a model: its one-file report.")
    sub = p.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report", help="write a model's one-file report (HTML, and a PDF when a browser can print)")
    rp.add_argument("--model", default=None, help="workspace model id, a state-dict file, or 'demo'")
    rp.add_argument("--arch", default=None, help="architecture of --model (default demo-cnn)")
    rp.add_argument("--dataset", default=None, help="dataset key (default digits), or the path of an ImageFolder "
                                                    "or CSV/JSON list under the allowed roots ($NNLAB_ALLOWED_ROOTS)")
    rp.add_argument("--workspace", default=None, help="workspace folder (default $NNLAB_WORKSPACE)")
    rp.add_argument("--variants", default="", help="comma-separated variant ids to put side by side")
    rp.add_argument("--goal", type=float, default=None, help="E_goal as a fraction (default: the pages' default)")
    rp.add_argument("--out", default="nnlab-report.html", help="where to write the HTML (the PDF goes beside it)")
    rp.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rp.add_argument("--lang", default=None, choices=sorted(i18n.LANGUAGES),
                    help="the report's language (default: from NNLAB_LANG / LANGUAGE / LC_ALL / LC_MESSAGES / LANG)")
    return p


def report(args: argparse.Namespace, ws: Any) -> tuple[int, str]:
    """The same report the pages build, written to ``--out``."""
    import diagnostics.tasks as dtasks
    from nnlab.jobs import refs

    dref = _data_ref(args.dataset or "digits")
    _, model_id, _ = _load(args.model or "demo", args.arch or "demo-cnn", dref, ws)
    if not ws.has_model(model_id):
        raise ValueError(f"--model must be a workspace model id or 'demo' for a report (got {args.model!r})")
    rec = ws.load_model_record(model_id)
    pre = rec.extra.get("preprocessing") if rec is not None else None
    src = refs.load_source(dref)
    ref = refs.data_ref(dref["key"], dref["path"], pre if pre and pre != src.native(ws.root).to_dict() else None)
    out = Path(args.out).resolve()
    res = dtasks.build_report(ws, model_id, ref, [v for v in args.variants.split(",") if v.strip()], args.goal,
                              progress=_progress(args.quiet), out=out,
                              lang=args.lang or i18n.language_from_env())
    return 0, json.dumps(res, indent=1)


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run one command; its JSON summary is all that goes to ``stdout``. Returns 0, or 2 for bad input."""
    from nnlab.workspace import Workspace

    out = stdout if stdout is not None else sys.stdout
    args = printing_to(build_parser(), out).parse_args(argv)
    with stdout_to_stderr():
        try:
            rc, doc = report(args, Workspace(args.workspace))
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            rc, doc = 2, None
    if doc is not None:
        out.write(doc + "\n")
        out.flush()
    return rc
