"""Benchmark: HTML tokenizer candidates for the PII rewriter, on generated realistic pages.

Run: ``.venv/bin/python bench/bench_html.py`` (``--quick`` for fewer repeats).
Candidates that are not installed are skipped: ``pip install lxml selectolax
python-lolhtml`` to compare them all (none is a runtime dependency).

Pages (generated, deterministic):

* ``form``  ~10 KB: a logged-in contact form in a table, with hidden fields
  carrying a phone number, a LINE-style user id and an e-mail, a script that
  builds ``<input`` strings, a style block, comments.
* ``big``   ~1 MB: a long account/order listing (tables, classed divs, links,
  ``data-*`` attributes, inline scripts, Japanese text) with the form embedded
  a few times.
* ``plain`` ~1 MB: the same listing without any input or PII: the cost of a
  page that needs no change.
* ``100k``  ~100 KB: the latency target (<= 2 ms added).

Each figure is the best of several runs (MB/s = page bytes / seconds).  The
scanner is fed 16 KB chunks, as the proxy receives them.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guard.pii.encoding import BodyTransform
from guard.pii.policy import Mode, Policy, Scope, Selector, default_policy
from guard.pii.rewriter import HTMLRewriter

CHUNK = 16 * 1024

FORM = """<form method="post" action="/support/contact" id="contact">
<table class="form"><tbody>
<tr><th>お名前</th><td><input type="text" name="name" value="山田 太郎" class="w300"></td></tr>
<tr><th>件名</th><td><select name="topic"><option value="1">ログイン</option>
<option value="2">支払い</option></select></td></tr>
<tr><th>内容</th><td><textarea name="body" rows="8" cols="60"><input value="not a tag"></textarea></td></tr>
</tbody></table>
<input type="hidden" name="mid" value="U4af4980629c2e7f5f6ae1e1cb8d9b3e7">
<input type="hidden" name="tel" value="090-1234-5678">
<input type="hidden" name="mail" value="taro.yamada@example.co.jp">
<INPUT TYPE=HIDDEN NAME=csrf VALUE=9f2c1e77aa0b4d2e8c61>
<input type="hidden" name="lang" value="ja">
<input type="submit" value="送信する" class="btn btn-primary">
</form>
"""

SCRIPT = """<script>
  var tpl = '<input type="hidden" name="x" value="' + v + '">';
  if (a < b && c > d) { document.write("<div>" + tpl + "</div>"); }
</script>
"""

STYLE = "<style>.form th{width:12em} .btn > span{color:#333} a[href^='http']{}</style>\n"


def _row(rng: random.Random, i: int) -> str:
    price = rng.randint(100, 99999)
    return (
        f'<tr class="row r{i % 2}" data-order-id="{100000 + i}"><td class="id">{100000 + i}</td>'
        f'<td><a href="/orders/{100000 + i}?ref=list&amp;p={i % 7}" title="注文 {i}">注文詳細</a></td>'
        f"<td>2021-01-{1 + i % 28:02d} 10:{i % 60:02d}</td><td class=price>&yen;{price:,}</td>"
        f"<td><span class='status s{i % 4}'>発送済み</span></td></tr>\n"
    )


def page(kind: str, size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    head = (
        '<!DOCTYPE html>\n<html lang="ja"><head><meta charset="utf-8"><title>サポート | Example</title>\n'
        '<link rel="stylesheet" href="/static/site.css">' + STYLE + SCRIPT + "</head>\n<body>\n"
        '<!-- header --><div id="header" class="hd"><a href="/"><img src="/logo.png" alt="Example"></a>'
        '<ul class="nav"><li><a href="/mypage">マイページ</a></li>'
        '<li><a href="/logout">ログアウト</a></li></ul></div>\n'
    )
    parts = [head]
    total = len(head.encode())
    i = 0
    while total < size:
        if kind != "plain" and i % 400 == 0:
            chunk = FORM + SCRIPT
        elif i % 50 == 0:
            chunk = '<table class="orders"><thead><tr><th>ID</th><th>注文</th><th>日時</th></tr></thead>'
            chunk += "<tbody>\n"
            chunk += "".join(_row(rng, i + k) for k in range(20)) + "</tbody></table>\n" + SCRIPT
        else:
            chunk = (
                f'<div class="item" id="i{i}"><h3>お知らせ {i}</h3><p>いつもご利用ありがとうございます。'
                f'詳しくは<a href="/news/{i}">こちら</a>をご覧ください。</p><!-- item {i} --></div>\n'
            )
        parts.append(chunk)
        total += len(chunk.encode())
        i += 1
    parts.append("</body></html>\n")
    return "".join(parts).encode("utf-8")


def _vault() -> Callable[[str, str], str]:
    counter = iter(range(10**9))

    def tokenize(kind: str, value: str) -> str:
        return f"pii_{next(counter):021d}A"

    return tokenize


POLICY = default_policy()   # compiled once, as the proxy does


def run_scanner(data: bytes) -> bytes:
    rw = HTMLRewriter(POLICY, _vault(), "utf-8")
    out = [rw.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(rw.close())
    return b"".join(out)


AUDIT = Policy(selectors=(Selector(Mode.DETECT, scopes=frozenset({Scope.HIDDEN, Scope.INPUTS, Scope.DATA})),))


def run_audit(data: bytes) -> bytes:
    """The PII audit: every input and data-* attribute inspected, nothing changed."""
    rw = HTMLRewriter(AUDIT, None, "utf-8")
    out = [rw.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(rw.close())
    return b"".join(out)


def run_htmlparser(data: bytes) -> None:
    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            pass

    p = P(convert_charrefs=False)
    text = data.decode("utf-8")
    for i in range(0, len(text), CHUNK):
        p.feed(text[i : i + CHUNK])
    p.close()


def candidates() -> dict[str, Callable[[bytes], object]]:
    found: dict[str, Callable[[bytes], object]] = {
        "scanner (rewrite, default policy)": run_scanner,
        "scanner (detect: all inputs and data-*)": run_audit,
        "html.parser (tokenize only)": run_htmlparser,
    }
    try:
        import lxml.html  # type: ignore[import-untyped]

        def run_lxml(data: bytes) -> object:
            doc = lxml.html.document_fromstring(data)
            for el in doc.xpath('//input[@type="hidden"]'):
                el.set("value", "x")
            return lxml.html.tostring(doc)

        found["lxml (parse, select, serialise)"] = run_lxml
    except ImportError:
        pass
    try:
        from selectolax.lexbor import LexborHTMLParser

        def run_selectolax(data: bytes) -> object:
            tree = LexborHTMLParser(data)
            for node in tree.css("input[type=hidden]"):
                node.attrs["value"] = "x"
            return tree.html

        found["selectolax/lexbor (parse, select, serialise)"] = run_selectolax
    except ImportError:
        pass
    try:
        import lolhtml

        def run_lolhtml(data: bytes) -> object:
            out: list[bytes] = []

            class Handler:
                def element(self, el: lolhtml.Element) -> None:
                    if el.get_attribute("value"):
                        el.set_attribute("value", "x")

            rw = lolhtml.HTMLRewriter(lambda b: out.append(bytes(b)))
            rw.on("input[type=hidden]", Handler())
            for i in range(0, len(data), CHUNK):
                rw.write(data[i : i + CHUNK])
            rw.end()
            return b"".join(out)

        found["lol_html via python-lolhtml (rewrite)"] = run_lolhtml
    except ImportError:
        pass
    return found


def best(fn: Callable[[bytes], object], data: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    pages = {"form": page("form", 10_000), "big": page("big", 1_000_000), "plain": page("plain", 1_000_000)}
    reps = {"form": 20 if args.quick else 200, "big": 2 if args.quick else 7, "plain": 2 if args.quick else 7}
    print(f"pages: form {len(pages['form'])} B, big {len(pages['big'])} B, plain {len(pages['plain'])} B")
    print(f"{'candidate':46} {'form MB/s':>10} {'big MB/s':>10} {'plain MB/s':>11}")
    for name, fn in candidates().items():
        row = [len(data) / best(fn, data, reps[k]) / 1e6 for k, data in pages.items()]
        print(f"{name:46} {row[0]:10.1f} {row[1]:10.1f} {row[2]:11.1f}")

    p100 = page("big", 100_000)
    t = best(run_scanner, p100, 5 if args.quick else 50)
    print(f"\nscanner, {len(p100)} B page: {t * 1e3:.2f} ms")
    gz = gzip.compress(p100)

    def gzip_roundtrip(data: bytes) -> bytes:
        bt = BodyTransform(HTMLRewriter(POLICY, _vault(), "utf-8"), ("gzip",))
        out = [b"".join(bt.feed(data[i : i + CHUNK])) for i in range(0, len(data), CHUNK)]
        return b"".join(out) + b"".join(bt.close())

    t = best(gzip_roundtrip, gz, 5 if args.quick else 30)
    print(f"scanner + gunzip + gzip (level 5), same page: {t * 1e3:.2f} ms")
    try:
        import brotli  # type: ignore[import-untyped]

        br = brotli.compress(p100)

        def br_roundtrip(data: bytes) -> bytes:
            bt = BodyTransform(HTMLRewriter(POLICY, _vault(), "utf-8"), ("br",))
            out = [b"".join(bt.feed(data[i : i + CHUNK])) for i in range(0, len(data), CHUNK)]
            return b"".join(out) + b"".join(bt.close())

        t = best(br_roundtrip, br, 5 if args.quick else 30)
        print(f"scanner + unbrotli + brotli (quality 4), same page: {t * 1e3:.2f} ms")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
