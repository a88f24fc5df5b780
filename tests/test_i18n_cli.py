"""Issue 24: the CLI (``python -m compression``) speaks the language of ``--lang`` or of the environment in what
people read (the help, progress and errors on stderr), while its JSON document on stdout is the same in every
language: the same keys and the same values, measured timings apart."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compression  # noqa: F401 - registers the methods
from compression.cli import main, split_lang
from nnlab import i18n

ROOT = Path(__file__).resolve().parents[1]
CYRILLIC = re.compile(r"[А-Яа-яЁё]")
LANG_VARS = ("NNLAB_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in LANG_VARS}
    return subprocess.run([sys.executable, "-m", "compression", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, check=False, env={**clean, **env})


def test_help_in_russian_from_the_flag_and_from_the_environment():
    by_flag = _cli(["--lang", "ru", "--help"])
    by_env = _cli(["--help"], LANG="ru_RU.UTF-8")
    english = _cli(["--help"])
    for out in (by_flag, by_env, english):
        assert out.returncode == 0, out.stderr
    assert CYRILLIC.search(by_flag.stdout) and CYRILLIC.search(by_env.stdout)
    assert by_flag.stdout == by_env.stdout
    assert "использование:" in by_flag.stdout and "Прунинг" in by_flag.stdout  # argparse's words and the methods
    assert not CYRILLIC.search(english.stdout)
    assert "Compress a model into measured variants" in english.stdout and "usage:" in english.stdout
    # --lang wins over the environment, and a subcommand's help follows it too
    assert not CYRILLIC.search(_cli(["--lang", "en", "--help"], LANG="ru_RU.UTF-8").stdout)
    sub = io.StringIO()
    with pytest.raises(SystemExit) as done:
        main(["apply", "--help", "--lang=ru"], stdout=sub)
    assert done.value.code == 0 and "рабочая папка" in sub.getvalue() and i18n.get_language() == "en"


def test_lang_is_taken_out_of_the_arguments_wherever_it_stands():
    assert split_lang(["apply", "--lang", "ru", "--quiet"]) == ("ru", ["apply", "--quiet"])
    assert split_lang(["--lang=EN", "methods"]) == ("en", ["methods"])
    assert split_lang(["methods"]) == (None, ["methods"])
    with pytest.raises(SystemExit):
        split_lang(["--lang", "de", "methods"])


def test_errors_on_stderr_follow_the_language_and_the_language_is_restored(tmp_path, capsys):
    argv = ["apply", "--model", "demo", "--workspace", str(tmp_path / "ws"), "--method", "prune-unstructured",
            "--set", "sparsity=2", "--quiet"]
    assert main(["--lang", "ru", *argv], stdout=io.StringIO()) == 2
    err_ru = capsys.readouterr().err
    assert main(["--lang", "en", *argv], stdout=io.StringIO()) == 2
    err_en = capsys.readouterr().err
    assert err_ru.startswith("ошибка: prune-unstructured: sparsity должно быть от 0 до 0.99"), err_ru
    assert err_en.startswith("error: prune-unstructured: sparsity must be between 0 and 0.99"), err_en
    assert i18n.get_language() == "en"  # main() sets the language only while it runs


# Values that differ between two runs of the same command: measured timings, and the run's id and time stamp.
TIMING_KEYS = {"median_ms", "min_ms", "p90_ms", "seconds", "repeats", "rounds", "created"}


def _same_document(a, b, rid_a: str, rid_b: str, path: str = "") -> list[str]:
    """Differences between two JSON documents: keys everywhere, values apart from timings and the run's id."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a if k not in TIMING_KEYS for d in _same_document(a[k], b[k], rid_a, rid_b, f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same_document(x, y, rid_a, rid_b, f"{path}[{i}]")]
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(rid_a, "<id>"), b.replace(rid_b, "<id>")
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} vs {b!r}"]


def test_json_document_is_the_same_in_english_and_russian(demo, tmp_path, capsys):
    state = tmp_path / "demo.pt"
    torch.save(demo[0].state_dict(), state)
    docs, errs = {}, {}
    for lang in ("en", "ru"):
        out = io.StringIO()
        rc = main(["--lang", lang, "apply", "--model", str(state), "--arch", "demo-cnn", "--dataset", "digits",
                   "--workspace", str(tmp_path / f"ws-{lang}"), "--method", "prune-unstructured",
                   "--set", "sparsity=0.5", "--method", "cluster", "--set", "k=8", "--repeats", "3"], stdout=out)
        assert rc == 0
        docs[lang], errs[lang] = json.loads(out.getvalue()), capsys.readouterr().err
    en, ru = docs["en"], docs["ru"]
    assert not _same_document(en, ru, en["id"], ru["id"]), _same_document(en, ru, en["id"], ru["id"])
    assert en["accuracy"] == ru["accuracy"] and en["method"] == ru["method"] == "prune-unstructured+cluster"
    assert not CYRILLIC.search(json.dumps(ru, ensure_ascii=False))  # nothing translated inside the document
    # what people read on stderr does follow the language: the progress lines
    assert "готово" in errs["ru"] and not CYRILLIC.search(errs["en"]) and "done" in errs["en"]


# The texts compression hands to the pages: translated where they are produced, English by default.

def test_method_registry_texts_follow_the_language():
    from compression.registry import family_label, get_method, method_description, method_label

    cls = get_method("prune-unstructured")
    help_en = {f.name: f.help for f in cls.fields_info()}
    assert method_label(cls) == cls.label == "Pruning: weights by magnitude (unstructured)"
    with i18n.language("ru"):
        assert method_label(cls) == "Прунинг: веса по модулю (неструктурированный)"
        assert family_label("quantization") == "квантизация" and CYRILLIC.search(method_description(cls))
        help_ru = {f.name: f.help for f in cls.fields_info()}
        with pytest.raises(ValueError, match="должно быть от 0 до 0.99"):
            cls(sparsity=2.0)
    assert help_en["sparsity"] == "Fraction of weights set to zero (0–0.99)"
    assert help_ru["sparsity"] == "Доля обнуляемых весов (0–0.99)" and set(help_ru) == set(help_en)


def test_figures_and_tables_follow_the_language_but_keep_their_keys():
    import pandas as pd

    from compression import columns, pareto
    from nnlab.records import Record

    recs = [Record(id="base", name="base", method="base", accuracy=0.9, size_bytes=4000, macs=1e6),
            Record(id="v", name="v", method="int8", parent="base", accuracy=0.89, size_bytes=1000, macs=1e6)]
    en = pareto.pareto_figure(recs, "size", base_id="base")
    with i18n.language("ru"):
        ru = pareto.pareto_figure(recs, "size", base_id="base")
        table = columns.shown(pd.DataFrame(pareto.summary_rows(recs, recs[0])))
    assert en.layout.title.text == "Accuracy vs size on disk" and en.layout.separators == ".,"
    assert ru.layout.title.text == "Точность и размер на диске" and ru.layout.separators == ", "
    assert ru.data[-1].name == "Фронт Парето" and en.data[-1].name == "Pareto frontier"
    assert "точность" in table.columns and "размер (КиБ)" in table.columns and "id" in table.columns
    assert "accuracy" in pareto.summary_rows(recs, recs[0])[0]  # the rows themselves keep the English keys
