"""Every name from a model, a policy or a run directory is inert text in report.md and
report.html (no script, no event handler, no injected link or image)."""

from __future__ import annotations

import html

import bitsmith
from bitsmith import Policy, QSpec
from bitsmith.report import write_report
from bitsmith.report.markdown import md_text
from bitsmith.rundir import RunWriter, layer_table_from_rows

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"
LINK = "![x](http://evil.example/t.png)"
W = QSpec("uniform_symmetric", 4, "channel")
A8 = QSpec("uniform_asymmetric", 8)


def test_markup_in_names_is_escaped_in_markdown_and_html(tmp_path, tiny_net, images) -> None:
    table = bitsmith.prepare(tiny_net, images[:1])[1]
    rows = table.to_rows()
    rows[0]["name"] = IMG                      # a model whose module is named with markup
    table = layer_table_from_rows(rows, table.total_params)
    run = RunWriter(tmp_path / "r", model=SCRIPT, dataset=LINK, eval_set=IMG, producer=SCRIPT)
    run.write_layers(table)
    run.set_fp32(accuracy=90.0)
    policy = Policy.uniform(table.names, W, A8)
    run.add_trial(IMG, policy=policy, accuracy=88.0, source=SCRIPT)
    run.add_trial("| pipe * star _under_", policy=Policy({}), accuracy=90.0, source=LINK)
    run.choose(IMG)
    run.write_export([{"name": SCRIPT, LINK: 1}])
    write_report(tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    page = (tmp_path / "r" / "report.html").read_text()
    for text in (md, page):
        assert "<img" not in text.replace('<img alt="', "") and "<script" not in text
        assert "onerror=alert(1)>" not in text
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in md        # shown, not rendered
    assert "&lt;script&gt;alert\\(2\\)&lt;/script&gt;" in md
    assert "!\\[x\\]\\(http://evil.example/t.png\\)" in md          # no injected image
    assert "\\| pipe \\* star \\_under\\_" in md                    # table cells intact
    assert html.escape(IMG) in page and html.escape(SCRIPT) in page
    lines = [line for line in md.splitlines() if line.startswith("| ") and "pipe" in line]
    assert len(lines) == 1 and lines[0].count(" | ") == 9          # still ten columns


def test_md_text_folds_newlines_and_escapes_markdown() -> None:
    assert md_text("a\nb") == "a b"
    assert md_text("[a](b)") == "\\[a\\]\\(b\\)"
    assert md_text("x & <y>") == "x &amp; &lt;y&gt;"
