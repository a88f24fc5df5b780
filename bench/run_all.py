"""Run every benchmark in bench/ and write their markdown tables into README.md.

Each ``bench/bench_*.py`` prints a markdown section on stdout. This script runs them one after another
(never in parallel: they measure time), then replaces the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` in README.md (appending the markers under "## Benchmarks" the first time).

    python bench/run_all.py [NAME ...] [NAME="--option value ..."]   # e.g. datacache="--images 20000"
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from subprocess import run  # benchmarks are our own scripts, run with fixed arguments

ROOT = Path(__file__).resolve().parents[1]


def main(names: list[str]) -> int:
    import shlex

    extra = {n.split("=", 1)[0]: shlex.split(n.split("=", 1)[1]) for n in names if "=" in n}
    names = [n.split("=", 1)[0] for n in names]
    scripts = sorted((ROOT / "bench").glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    readme = ROOT / "README.md"
    blocks: dict[str, str] = {}
    failed = 0
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"== {script.name}", flush=True)
        t0 = time.time()
        proc = run([sys.executable, str(script), *extra.get(name, [])], cwd=ROOT, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        out = proc.stdout.strip()
        print(out, flush=True)
        if proc.returncode != 0:
            failed += 1
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        blocks[name] = (f"<!-- bench:{name} -->\n{out}\n\n_(ran in {time.time() - t0:.0f} s on "
                        f"{time.strftime('%Y-%m-%d')})_\n<!-- /bench:{name} -->")
    text = readme.read_text()  # read now, not before the runs: the README may have been edited meanwhile
    for name, block in blocks.items():
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:  # append at the end of the Benchmarks section
            start = text.find("## Benchmarks\n")
            if start < 0:
                text += f"\n## Benchmarks\n\n{block}\n"
            else:
                end = text.find("\n## ", start + 1)
                end = len(text) if end < 0 else end + 1
                text = text[:end].rstrip("\n") + f"\n\n{block}\n\n" + text[end:]
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(readme)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
