"""Issue 24: the one-file report in Russian — every heading translated, the same numbers, a PDF whose fonts draw
the Cyrillic it shows (no missing-glyph boxes)."""

from __future__ import annotations

import html as htmllib
import re
import zlib
from collections import Counter

import pytest

from nnlab.jobs import refs
from nnlab.workspace import Workspace

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
# Table headers that are the same in every language: symbols and names from the data.
SAME_EVERYWHERE = {"", "E_train", "E_test", "E_goal", "E_test − E_goal", "f1"}


@pytest.fixture(scope="module")
def reports(demo, digits, tmp_path_factory):
    """The same report built in English and in Russian (data checks run, one variant side by side, a goal below
    E_test so that the diagnosis lists the lecture's actions with their verdicts)."""
    import diagnostics.tasks as dtasks
    from compression.registry import config_from_dict
    from compression.variant import make_variant
    from diagnostics import datacheck

    model, base, _hist = demo
    ws = Workspace()
    rep = datacheck.data_report(model, digits)
    ws.save_run(datacheck.data_checks_key(base.id, digits.id), rep.to_dict())
    ws.save_run(datacheck.report_key(base.id, digits.id), rep.summary())
    variant = make_variant(model, base.id, base.arch, [config_from_dict({"method": "prune-unstructured",
                                                                         "sparsity": 0.5})], digits, ws,
                           latency_repeats=3)
    out = {}
    for lang in ("en", "ru"):
        path = tmp_path_factory.mktemp(f"report-{lang}") / "report.html"
        res = dtasks.build_report(ws, base.id, refs.data_ref("digits"), [variant.id], 0.002, out=path, lang=lang)
        out[lang] = (path.read_text(), res, path, variant)
    return out


def _tags(html: str, names: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", htmllib.unescape(m)).strip()
            for m in re.findall(rf"<(?:{names})\b[^>]*>(.*?)</(?:{names})>", html, re.S)]


def _text(html: str) -> str:
    """The visible text: no style, no embedded images, no generation time, no tags."""
    html = re.sub(r"<style>.*?</style>", " ", html, flags=re.S)
    html = re.sub(r"""src=(['"])data:[^'"]*\1""", " ", html)
    html = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", " ", html)  # "Generated …": the minute may differ
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", html))


def _numbers(text: str, lang: str) -> Counter:
    """Every number in ``text`` as Python writes it: Russian "1 797" and "12,34" become 1797 and 12.34."""
    if lang == "ru":
        # data and ids (preprocessing statistics, method configs) keep Python's "0.5" in every language
        pattern, thousands, decimal = r"\d+(?:\u202f\d{3})*(?:[,.]\d+)?", "\u202f", ","
    else:
        pattern, thousands, decimal = r"\d+(?:,\d{3})*(?:\.\d+)?", ",", "."
    return Counter(m.replace(thousands, "").replace(decimal, ".") for m in re.findall(pattern, text))


def test_every_heading_is_in_russian(reports):
    en, ru = reports["en"][0], reports["ru"][0]
    h_en, h_ru = _tags(en, "h1|h2|h3"), _tags(ru, "h1|h2|h3")
    assert len(h_ru) == len(h_en) >= 9, (h_en, h_ru)  # title, six sections, two sub-tables (and notes, if any)
    for e, r in zip(h_en, h_ru):
        assert CYRILLIC.search(r), f"heading not translated: {r!r}"
        assert r != e
    assert "<html lang='ru'>" in ru and "<html lang='en'>" in en
    variant_names = {reports["en"][3].name[:40]}
    for e, r in zip(_tags(en, "th"), _tags(ru, "th")):  # table headers too, except symbols and names
        if e not in SAME_EVERYWHERE and e not in variant_names:
            assert CYRILLIC.search(r), f"table header not translated: {e!r} → {r!r}"


def test_the_diagnosis_and_sentences_are_in_russian(reports):
    from diagnostics.diagnosis import VERDICT_LABELS
    from nnlab import i18n

    ru = reports["ru"][0]
    body = _text(ru)
    for english in ("Test accuracy", "Suspected label errors", "Diagnosis against the goal", "supported",
                    "contradicted", "training samples", "true", "predicted"):
        assert english not in body, english
    with i18n.language("ru"):
        shown = {i18n._(v) for v in VERDICT_LABELS.values()}
    assert any(v in body for v in shown)
    section = re.search(r"<section id='diagnosis'>.*?</section>", ru, re.S).group(0)
    items = _tags(section, "li")
    assert items and all(CYRILLIC.search(li) for li in items)


def test_the_numbers_are_the_same_in_both_languages(reports):
    en, ru = reports["en"][0], reports["ru"][0]
    n_en, n_ru = _numbers(_text(en), "en"), _numbers(_text(ru), "ru")
    assert sum(n_en.values()) > 100
    assert n_en == n_ru, (n_en - n_ru, n_ru - n_en)
    assert re.search(r"\d+,\d{2}\u00a0?%", _text(ru))  # the percentages carry a decimal comma


def _pdf_fonts(pdf: bytes) -> list[tuple[str, dict[int, str], object]]:
    """Each embedded composite font of a PDF (as Chromium prints it): its name, its ToUnicode map (glyph id → the
    text it draws) and its TrueType program (fontTools)."""
    import io

    from fontTools.ttLib import TTFont

    objs = {int(m.group(1)): m.group(2) for m in re.finditer(rb"(\d+) 0 obj(.*?)endobj", pdf, re.S)}

    def stream(num: int) -> bytes:
        body = objs[num]
        start = re.search(rb"stream\r?\n", body).end()
        raw = body[start:body.rfind(b"endstream")]
        return zlib.decompress(raw) if b"/FlateDecode" in body[:start] else raw

    def ref(body: bytes, key: bytes) -> int:
        return int(re.search(rb"/" + key + rb"\s*\[?\s*(\d+) 0 R", body).group(1))

    fonts = []
    for body in objs.values():
        if b"/Subtype /Type0" not in body and b"/Subtype/Type0" not in body:
            continue
        name = re.search(rb"/BaseFont\s*/(\S+)", body).group(1).decode()
        cmap = stream(ref(body, b"ToUnicode"))
        glyphs: dict[int, str] = {}
        for block in re.findall(rb"beginbfchar(.*?)endbfchar", cmap, re.S):
            for g, u in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
                glyphs[int(g, 16)] = bytes.fromhex(u.decode()).decode("utf-16-be")
        for block in re.findall(rb"beginbfrange(.*?)endbfrange", cmap, re.S):
            for lo, hi, u in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
                for k, g in enumerate(range(int(lo, 16), int(hi, 16) + 1)):
                    glyphs[g] = chr(int(u, 16) + k)
        descendant = objs[ref(body, b"DescendantFonts")]
        program = stream(ref(objs[ref(descendant, b"FontDescriptor")], b"FontFile2"))
        fonts.append((name, glyphs, TTFont(io.BytesIO(program))))
    return fonts


def test_the_russian_pdf_draws_cyrillic(reports):
    html, res, path, _variant = reports["ru"]
    assert res["pdf"], "Debian's chromium is installed by make test: the PDF must be printed"
    pdf = path.with_suffix(".pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and len(pdf) > 10_000
    fonts = _pdf_fonts(pdf)
    assert fonts, "no embedded font found"
    needed = set(CYRILLIC.findall("".join(_tags(html, "h1|h2|h3"))))
    assert len(needed) > 15
    # every letter of the headings is drawn by a real glyph of an embedded font: not glyph 0 (.notdef, the
    # missing-glyph box) and one with outlines
    drawn = set()
    for _name, glyphs, font in fonts:
        order, glyf = font.getGlyphOrder(), font["glyf"]
        for gid, ch in glyphs.items():
            if ch in needed and 0 < gid < len(order) and glyf[order[gid]].numberOfContours != 0:
                drawn.add(ch)
    assert drawn == needed, f"no embedded glyph draws {sorted(needed - drawn)}: {[f[0] for f in fonts]}"
    assert not any(0 in glyphs for _name, glyphs, _font in fonts), "something is drawn with .notdef (a box)"


def test_cli_takes_the_language_from_the_environment(reports, demo, tmp_path, monkeypatch):
    from diagnostics.cli import build_parser, main

    assert build_parser().parse_args(["report", "--lang", "ru"]).lang == "ru"
    out = tmp_path / "r.html"
    monkeypatch.setenv("LANG", "ru_RU.UTF-8")
    for key in ("NNLAB_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(key, raising=False)
    assert main(["report", "--model", demo[1].id, "--goal", "0.01", "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert "<html lang='ru'>" in text and "Карточка модели" in text


def test_the_diagnosis_speaks_the_lectures_words_in_russian():
    """The actions in the lecture's own Russian wording, verdicts and regimes translated where shown, numbers with
    a decimal comma; the identifiers (verdict, regime) and the English text unchanged."""
    from diagnostics.diagnosis import Facts, diagnose, regime_label, verdict_label
    from nnlab import i18n

    facts = Facts(label_issue_fraction=0.002, label_issues=3, imbalance_ratio=1.2, pixel_shift=0.01)
    en = diagnose(0.10, 0.12, 0.05, facts)
    with i18n.language("ru"):
        ru = diagnose(0.10, 0.12, 0.05, facts)
        regime, verdicts = regime_label(ru.regime), [verdict_label(a.verdict) for a in ru.actions]
    assert ru.regime == en.regime == "underfitting" and [a.verdict for a in ru.actions] == [a.verdict for a in en.actions]
    assert en.actions[0].text == "Increase the network size" and "E_train = 10.00%" in en.headline
    assert regime == "недообучение" and "подтверждается" in verdicts and "опровергается" in verdicts
    texts = [a.text for a in ru.actions]
    assert texts[:2] == ["Увеличить размер НС", "Улучшить алгоритм обучения (дольше обучать, другой оптимизатор, "
                                                  "расписание)"]
    assert "Анализ качества исходных данных: несбалансированная выборка" in texts
    assert "E_train = 10,00%" in ru.headline and "E_goal = 5,00%" in ru.headline
    assert all(CYRILLIC.search(a.evidence) for a in ru.actions)
    over = diagnose(0.01, 0.12, 0.05, Facts(domain_auc=0.7))
    with i18n.language("ru"):
        over_ru = diagnose(0.01, 0.12, 0.05, Facts(domain_auc=0.7))
    assert [a.text for a in over_ru.actions][-1] == "Несоответствие S_train и S_test"
    assert over.actions[-1].evidence == "domain-classifier AUC = 0.700: the splits differ."
    assert over_ru.actions[-1].evidence == "AUC классификатора доменов = 0,700: выборки различаются."
