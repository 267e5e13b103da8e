"""Property tests of the injector against html5lib (SPEC Q2): random documents, random chunkings.

Two things html5lib does differently from the browsers our snippet runs in shape the grammar:

* html5lib parses ``<noscript>`` as if scripting were disabled (its content is markup), a
  browser that runs the snippet parses it as raw text. Where BeautifulSoup(..., "html5lib") is
  the oracle, noscript content is limited to what both readings put in the head (whitespace,
  <link>, <meta>, <style>) — not even plain text, which the scripting-disabled parser treats
  as body content. Raw-text noscript content (fake "</head>", "<body>") is checked against
  html5lib's own scripting-enabled mode instead.
* html5lib 1.1 has no ``<template>`` support (it parses a head template as body content), so
  documents with templates are checked for chunking independence and byte exactness only;
  the exact-bytes tests in test_injection.py cover template placement.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import html5lib
import pytest
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning
from bs4.element import Tag
from hypothesis import given, settings
from hypothesis import strategies as st

from replay_middleware.injection import Injector, Insertion, MetaPolicy, ScanCache, inject

SNIPPET_ID = "replay-middleware-config"
SNIPPET = b'<script type="application/json" id="' + SNIPPET_ID.encode() + b'">{}</script>'

Bytes = st.SearchStrategy[bytes]


def render(metas: Sequence[MetaPolicy]) -> Insertion:
    return Insertion(SNIPPET)


def one_of(*options: bytes) -> Bytes:
    return st.sampled_from(options)


def joined(piece: Bytes, max_size: int) -> Bytes:
    return st.lists(piece, max_size=max_size).map(b"".join)


def concat(*parts: Bytes) -> Bytes:
    return st.tuples(*parts).map(b"".join)


# -- grammar --------------------------------------------------------------------------------

WS = one_of(b"", b" ", b"\n", b"\r\n", b"\t", b"\n  ", b"\f")
TEXT = one_of(b"x", b"hello world", b"a < b", b"a > b", b"&amp;", b"caf\xc3\xa9", b"'", b'"', b" ")
FAKE_MARKUP = one_of(
    b"</head>",
    b"</HEAD >",
    b"<head>",
    b"<body>",
    b'<BODY class="x">',
    b"</body>",
    b"<p>",
    b"<div>",
    b"<header>",
    b"</html>",
    b"<!--",
    b"-->",
    b"<![CDATA[",
    b"]]>",
    b"</title>",
    b"</style>",
    b"</titles>",
    b"</stylex >",
    b"</scriptx>",
    b"</noscripts>",
    b"</noframes-x>",
)
RAW_TEXT = joined(st.one_of(TEXT, FAKE_MARKUP), 5)
SCRIPT_TEXT = joined(
    st.one_of(
        TEXT,
        FAKE_MARKUP,
        one_of(
            b"<script>",
            b"</script>",
            b"<script ",
            b"</script",
            b"-",
            b"<!--<script>",
            b"<!--<script></script>",
            b'<!--\ndocument.write("<script src=a></script>");\n//-->',
            b"<!-->",
            b"<!--->",
            b"<!--</script>",
            b"<SCRIPT/",
        ),
    ),
    6,
)

COMMENT = one_of(
    b"<!-- c -->",
    b"<!---->",
    b"<!-->",
    b"<!--->",
    b"<!-- </head> -->",
    b"<!-- <body> --!>",
    b"<!-- a -- b --->",
    b"<?php echo 1 ?>",
    b"<!x>",
    b"</ x>",
    b"<![CDATA[ x ]]>",
    b"</>",
)
TITLE = concat(
    one_of(b"<title>", b"<TITLE>", b'<title data-x="a>b">'),
    RAW_TEXT,
    one_of(b"</title>", b"</TITLE >", b"</title\n>"),
)
STYLE = concat(
    one_of(b"<style>", b"<STYLE media='x>y'>"), RAW_TEXT, one_of(b"</style>", b"</Style>")
)
NOFRAMES = concat(one_of(b"<noframes>"), RAW_TEXT, one_of(b"</noframes>"))
SCRIPT = concat(
    one_of(b"<script>", b'<script type="module">', b"<SCRIPT src=a.js />", b"<script\nasync>"),
    SCRIPT_TEXT,
    one_of(b"</script>", b"</SCRIPT >", b"</script\n>"),
)
NOSCRIPT_SAFE = concat(
    one_of(b"<noscript>"),
    joined(
        one_of(
            b"",
            b" ",
            b'<link rel="stylesheet" href="n.css">',
            b'<meta name="robots" content="noindex">',
            b"<style>a{}</style>",
        ),
        3,
    ),
    one_of(b"</noscript>"),
)
NOSCRIPT_RAW = concat(one_of(b"<noscript>", b"<NOSCRIPT>"), RAW_TEXT, one_of(b"</noscript>"))
TEMPLATE = concat(
    one_of(b"<template>", b"<TEMPLATE shadowrootmode=open>"),
    joined(
        st.one_of(
            TEXT,
            FAKE_MARKUP,
            one_of(
                b"<textarea></head></template></textarea>",
                b"<template><p></template>",
                b"<script></template></script>",
                b"<xmp></template></xmp>",
                b"<plaintext>",
            ),
        ),
        4,
    ),
    one_of(b"</template>", b"</TEMPLATE>", b""),
)
CSP_META = one_of(
    b'<meta http-equiv="Content-Security-Policy" content="default-src \'self\'">',
    b"<META HTTP-EQUIV=content-security-policy CONTENT=default-src>",
    b"<meta http-equiv='Content-Security-Policy' content='script-src &#39;self&#39; &amp; x'>",
    b'<meta content="img-src *" http-equiv="Content-Security-Policy" content="b">',
    b'<meta http-equiv = "content-security-policy"\ncontent = "a>b">',
    b'<meta http-equiv="Content-Security-Policy" content="">',
)
META = st.one_of(
    CSP_META,
    one_of(
        b'<meta charset="utf-8">',
        b'<meta name="viewport" content="width=device-width">',
        b'<meta http-equiv="Content-Security-Policy-Report-Only" content="x">',
        b'<meta http-equiv="refresh" content="5; url=/">',
        b'<meta http-equiv="Content-Security-Policy">',
        b"<meta name=x content=y/>",
    ),
)
LINK = one_of(
    b'<link rel="stylesheet" href="a.css">',
    b"<link href='a>b' rel=icon>",
    b"<LINK REL=x HREF=/y/>",
    b'<link title="</head><body>">',
    b'<link a"b c=d>',
    b"<link\nrel=preload\nhref=x>",
    b"<base href=/>",
    b"<link title = 'x' >",
    b"<link =x a=b=c>",
    b"<link/a/b>",
    b"<basefont><bgsound>",
    b'<html lang="en">',
    b"<head>",
    b"</p>",
    b"</template>",
    b"</header>",
    b"</bodyguard>",
    b"</head-x>",
    b"</HEADX >",
    b"</bodies a='</head>'>",
)
HEAD_CLOSER = one_of(
    b"<div>",
    b"<svg></svg>",
    b"<frameset>",
    b"<textarea></head></textarea>",
    b"x",
    b"</br>",
    b"<head-x>",
    b"<bodyguard>",
    b"<headers>",
    b"</html>",
)


def document(*, noscript: Bytes, template: bool) -> Bytes:
    """Realistic documents: prologue, optional html/head, head content, then a body."""
    head_items = [WS, TITLE, STYLE, NOFRAMES, SCRIPT, noscript, META, LINK, COMMENT]
    if template:
        head_items.append(TEMPLATE)
    body_item = st.one_of(
        TEXT,
        META,
        one_of(
            b"<header>x</header>",
            b"<bodyguard>y</bodyguard>",
            b"<heading-x>z</heading-x>",
            b"<head-x>",
            b"<p>hi</p>",
            b"<div>",
            b"</head>",
            b"<textarea></head></textarea>",
            b"a --> b",
            b"a --!> b",
        ),
    )
    return concat(
        one_of(b"", b"\xef\xbb\xbf"),
        joined(st.one_of(WS, one_of(b"<!-- c -->", b"<?xml version='1.0'?>", b"<!---->")), 2),
        one_of(
            b"<!DOCTYPE html>",
            b"<!doctype html>",
            b"<!DocType HTML>",
            b"<!doctypehtml>",
            b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">',
            b"",
        ),
        WS,
        one_of(b"", b"<html>", b'<HTML lang="en" data-x="a>b">', b"<html\n>", b"<html/>"),
        WS,
        one_of(b"", b"<head>", b"<HEAD class=x>"),
        joined(st.one_of(*head_items), 8),
        st.one_of(one_of(b"", b"</head>", b"</HEAD>", b"</head >", b"</head\n>"), HEAD_CLOSER),
        WS,
        one_of(b"", b"<body>", b'<body class="a" data-x="</head>">', b"<BODY>", b"<bodyx>"),
        joined(body_item, 4),
        one_of(b"", b"</body>", b"</body></html>\n"),
    )


FRAGMENTS = st.one_of(
    one_of(
        b"<div>hi</div>",
        b"<p>",
        b'{"a": "<head></head>"}',
        b"hello </head>",
        b"<head><title>x</title></head>",
        b"<body></body>",
        b"<htmlx>",
        b"<?xml version='1.0'?><rss/>",
    ),
    concat(
        one_of(b"", b"\xef\xbb\xbf", b" <!-- c --> "), one_of(b"<div>", b"<tr>", b"x"), RAW_TEXT
    ),
)

DOCUMENTS = st.one_of(document(noscript=NOSCRIPT_SAFE, template=True), FRAGMENTS)
DOCUMENTS_HTML5LIB = document(noscript=NOSCRIPT_SAFE, template=False)
DOCUMENTS_SCRIPTING = document(noscript=NOSCRIPT_RAW, template=False)

# Tags built from the characters that decide where a tag ends.
TAG_SOUP = concat(
    one_of(b"<link", b"<meta", b"</x", b"<LINK", b"<meta http-equiv=a"),
    joined(
        one_of(
            b" ", b"\n", b"/", b"=", b'"', b"'", b">", b"<", b"`", b"a", b"b",
            b'="x>"', b"='y'", b"http-equiv", b"content", b"Content-Security-Policy",
        ),
        12,
    ),
    one_of(b">", b""),
)  # fmt: skip


def chunked(data: st.DataObject, body: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8), label="cuts"))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def run_chunks(chunks: Sequence[bytes]) -> tuple[bytes, Injector]:
    injector = Injector(render)
    out = b"".join(injector.feed(chunk) for chunk in chunks)
    return out + injector.close(), injector


def as_text(body: bytes) -> str:
    # The BOM is the decoder's business, not the tree builder's; the grammar is UTF-8.
    return body.removeprefix(b"\xef\xbb\xbf").decode("utf-8")


def snippet_parent_bs4(body: bytes) -> Tag | None:
    """The parent of the snippet's <script> as BeautifulSoup(..., "html5lib") builds it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(as_text(body), "html5lib")
    found = soup.find("script", id=SNIPPET_ID)
    return found.parent if isinstance(found, Tag) else None


def in_head(parent: Tag | None) -> bool:
    return parent is not None and parent.name == "head"


def snippet_parent_scripting(body: bytes) -> str | None:
    tree = html5lib.parse(
        as_text(body), treebuilder="etree", namespaceHTMLElements=False, scripting=True
    )
    for parent in tree.iter():
        for child in parent:
            if child.tag == "script" and child.get("id") == SNIPPET_ID:
                return parent.tag if isinstance(parent, ET.Element) else None
    return None


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=DOCUMENTS, data=st.data())
def test_output_is_independent_of_chunking(body: bytes, data: st.DataObject) -> None:
    expected, whole = inject(body, render)
    out, injector = run_chunks(chunked(data, body))
    assert out == expected
    assert (injector.injected, injector.reason, injector.added) == (
        whole.injected,
        whole.reason,
        whole.added,
    )


@settings(max_examples=300, deadline=None)
@given(body=DOCUMENTS)
def test_injected_output_is_input_plus_one_snippet(body: bytes) -> None:
    out, injector = inject(body, render)
    if injector.injected:
        assert out.count(SNIPPET) == 1
        assert out.replace(SNIPPET, b"") == body
        assert injector.added == len(SNIPPET)


@settings(max_examples=300, deadline=None)
@given(body=DOCUMENTS)
def test_skipped_output_is_byte_identical(body: bytes) -> None:
    out, injector = inject(body, render)
    if not injector.injected:
        assert out == body
        assert injector.added == 0
        assert injector.reason in {"fragment", "no_insertion_point", "already_injected"}


@settings(max_examples=300, deadline=None)
@given(body=FRAGMENTS)
def test_fragments_are_skipped(body: bytes) -> None:
    out, injector = inject(body, render)
    assert (out, injector.reason) == (body, "fragment")


@settings(max_examples=300, deadline=None)
@given(body=DOCUMENTS_HTML5LIB)
def test_snippet_is_a_child_of_head_for_html5lib(body: bytes) -> None:
    out, injector = inject(body, render)
    if injector.injected:
        assert in_head(snippet_parent_bs4(out))
    elif injector.reason == "no_insertion_point":
        # Skipping was necessary: appended at the end, the snippet would not be in the head.
        assert not in_head(snippet_parent_bs4(body + SNIPPET))


@settings(max_examples=300, deadline=None)
@given(body=DOCUMENTS_SCRIPTING)
def test_snippet_is_a_child_of_head_with_scripting_enabled(body: bytes) -> None:
    out, injector = inject(body, render)
    if injector.injected:
        assert snippet_parent_scripting(out) == "head"
    elif injector.reason == "no_insertion_point":
        assert snippet_parent_scripting(body + SNIPPET) != "head"


@settings(max_examples=300, deadline=None)
@given(soup=TAG_SOUP, data=st.data())
def test_tag_ends_where_html5lib_ends_it(soup: bytes, data: st.DataObject) -> None:
    body = b"<!doctype html><head>" + soup + b"</head><body>"
    out, injector = inject(body, render)
    assert run_chunks(chunked(data, body))[0] == out
    if injector.injected:
        assert in_head(snippet_parent_bs4(out))
    else:
        assert (out, injector.reason) == (body, "no_insertion_point")
        assert not in_head(snippet_parent_bs4(body + SNIPPET))


@settings(max_examples=300, deadline=None)
@given(body=DOCUMENTS_HTML5LIB)
def test_meta_policies_match_html5lib_and_rewrites_replace_exact_tokens(body: bytes) -> None:
    seen: list[MetaPolicy] = []

    def rewriting(metas: Sequence[MetaPolicy]) -> Insertion:
        seen.extend(metas)
        return Insertion(SNIPPET, {i: b'"R%d"' % i for i in range(len(metas))})

    out, injector = inject(body, rewriting)
    if not injector.injected:
        return
    expected = bytearray(body)
    for i, meta in reversed(list(enumerate(seen))):
        expected[meta.start : meta.end] = b'"R%d"' % i
    assert out.replace(SNIPPET, b"") == expected
    assert injector.added == len(out) - len(body)

    # What html5lib parsed as CSP metas in the head before the snippet, in order.
    parent = snippet_parent_bs4(inject(body, render)[0])
    assert parent is not None
    contents = []
    for node in parent.children:
        if isinstance(node, Tag) and node.get("id") == SNIPPET_ID:
            break
        if isinstance(node, Tag) and node.name == "meta":
            equiv, content = node.get("http-equiv"), node.get("content")
            if (
                isinstance(equiv, str)
                and equiv.lower() == "content-security-policy"
                and isinstance(content, str)
            ):
                contents.append(content)
    assert [meta.content for meta in seen] == contents


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(DOCUMENTS, min_size=1, max_size=4), data=st.data())
def test_scan_cache_gives_the_uncached_output(bodies: list[bytes], data: st.DataObject) -> None:
    # Bodies that share prefixes with earlier ones (a cached head, then anything after any
    # cut), each injected twice, in random chunks, through one shared cache: every output and
    # decision must be what an injector without a cache gives.
    mixed = list(bodies)
    for body in bodies:
        # Cut anywhere, or just before a tag (where a head often stops being shared), and go
        # on with another document's bytes from there.
        tags = [i for i in range(len(body)) if body[i : i + 1] == b"<"]
        cut = data.draw(
            st.sampled_from(tags) if tags else st.integers(0, len(body)), label="cut"
        )
        tail = data.draw(st.one_of(st.sampled_from(bodies), DOCUMENTS), label="tail")
        mixed.append(body[:cut] + tail[min(cut, len(tail)) :])
        mixed.append(body[:cut] + data.draw(HEAD_CLOSER, label="closer") + tail)
    cache = ScanCache()
    for body in mixed + mixed:
        expected, whole = inject(body, render)
        injector = Injector(render, cache=cache)
        out = b"".join(injector.feed(chunk) for chunk in chunked(data, body))
        out += injector.close()
        assert out == expected
        assert (injector.injected, injector.reason, injector.added) == (
            whole.injected,
            whole.reason,
            whole.added,
        )


def test_scan_cache_answers_a_known_head_without_scanning(monkeypatch: pytest.MonkeyPatch) -> None:
    head = b'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="x">'
    cache = ScanCache()
    first, _ = inject(head + b"</head><body>one</body>", render)
    injector = Injector(render, cache=cache)
    assert injector.feed(head + b"</head><body>one</body>") + injector.close() == first
    # Same head, another body: answered from the cache (the scanner never runs: a head that
    # no scan could accept proves it), with the same meta policies handed to render.
    seen: list[Sequence[MetaPolicy]] = []

    def recording(metas: Sequence[MetaPolicy]) -> Insertion:
        seen.append(metas)
        return render(metas)

    def no_scan(self: Injector, eof: bool) -> None:
        raise AssertionError("scanned a cached head")

    monkeypatch.setattr(Injector, "_scan", no_scan)
    second = Injector(recording, cache=cache)
    out = second.feed(head + b"</head><body>two</body>") + second.close()
    monkeypatch.undo()
    assert out == inject(head + b"</head><body>two</body>", render)[0]
    assert [m.content for m in seen[0]] == ["x"]


def test_scan_cache_stops_learning_when_heads_never_repeat() -> None:
    cache = ScanCache()
    for i in range(200):
        body = b'<!DOCTYPE html><head><meta name="csrf" content="%d"></head>' % i
        assert inject(body, render)[0] == (
            lambda inj: inj.feed(body) + inj.close()
        )(Injector(render, cache=cache))
    assert len(cache._entries) <= 34  # learning stopped after the misses piled up
