"""Exact-bytes tests of the streaming injector (SPEC H3, H4, H6; notes/injection.md §6 B-D)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import html5lib
import pytest

from replay_middleware.injection import Injector, Insertion, MetaPolicy, inject

SNIPPET = b'<script type="application/json" id="replay-middleware-config">{}</script>'
SNIPPET_ID = "replay-middleware-config"


def render(metas: Sequence[MetaPolicy]) -> Insertion:
    return Insertion(SNIPPET)


def run_chunks(chunks: Sequence[bytes], max_scan_bytes: int = 256 * 1024) -> tuple[bytes, Injector]:
    injector = Injector(render, max_scan_bytes=max_scan_bytes)
    out = b"".join(injector.feed(chunk) for chunk in chunks)
    return out + injector.close(), injector


def parent_in_browser(document: bytes) -> str | None:
    """Tag of the snippet's parent as html5lib builds it with scripting enabled (as a browser
    that runs the snippet does: <noscript> content is raw text)."""
    text = document.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    tree = html5lib.parse(text, treebuilder="etree", namespaceHTMLElements=False, scripting=True)
    for parent in tree.iter():
        for child in parent:
            if child.get("id") == SNIPPET_ID:
                return parent.tag if isinstance(parent, ET.Element) else None
    return None


# (bytes before the insertion point, bytes after it). The input is their concatenation, the
# expected output has SNIPPET between them.
INJECTED = [
    pytest.param(
        b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Home</title>\n',
        b"</head>\n<body><p>hi</p></body>\n</html>\n",
        id="plain-page",
    ),
    pytest.param(
        b"<!DOCTYPE HTML><HTML><HEAD><TITLE>x</TITLE>", b"</HEAD><BODY></BODY></HTML>", id="upper"
    ),
    pytest.param(b"<!doctype html><head><title>x</title>", b"</head >", id="end-tag-space"),
    pytest.param(b"<!doctype html><head>", b"</head\n\t>", id="end-tag-newline"),
    pytest.param(b"<!doctype html><head>", b'</head class="a>b"><body>', id="end-tag-attrs"),
    pytest.param(b"<!doctype html><head>", b"</head/>", id="end-tag-slash"),
    pytest.param(b"<!doctype html>", b"<body><header>hi</header></body>", id="header-in-body"),
    pytest.param(
        b"<!doctype html><head><title>t</title>", b"<header>x</header></head>", id="header-in-head"
    ),
    pytest.param(
        b"<!doctype html><head></header><link rel=a>", b"</head>", id="header-end-tag-ignored"
    ),
    pytest.param(b"<!doctype html><head>", b"<bodyguard></bodyguard>", id="bodyguard-closes"),
    pytest.param(
        b"<!doctype html><head></bodyguard><meta charset=utf-8>", b"</head>", id="bodyguard-end"
    ),
    pytest.param(b"<!doctype html><head>", b"<head-x></head-x></head>", id="head-x-closes"),
    pytest.param(b"<!doctype html><head>", b"<heading-x>", id="heading-x-closes"),
    pytest.param(b"<!doctype html><head></head-x>", b"</head>", id="head-x-end-ignored"),
    pytest.param(
        b"<!doctype html><head><!-- </head><body> --><title>x</title>", b"</head>", id="comment"
    ),
    pytest.param(b"<!doctype html><head><!-->", b"</head><body>-->", id="comment-abrupt"),
    pytest.param(b"<!doctype html><head><!--->", b"</head>-->", id="comment-abrupt-dash"),
    pytest.param(b"<!doctype html><head><!-- a --!><link>", b"</head>", id="comment-bang-end"),
    pytest.param(b"<!doctype html><head><!-- a -- b ---->", b"</head>", id="comment-dashes"),
    pytest.param(b"<!doctype html><head><?php x ?><title>x</title>", b"</head>", id="bogus-pi"),
    pytest.param(b"<!doctype html><head></ x>", b"</head>", id="bogus-end-tag"),
    pytest.param(b"<!doctype html><head><!ELEMENT x>", b"</head>", id="bogus-bang"),
    pytest.param(b"<!doctype html><head></>", b"</head>", id="empty-end-tag"),
    pytest.param(b"<!doctype html><head><!doctype html>", b"</head>", id="second-doctype"),
    pytest.param(
        b'<!doctype html><head><script>document.write("<body></head>")</script>',
        b"</head>",
        id="script",
    ),
    pytest.param(
        b"<!doctype html><head><SCRIPT>a = '</scriptx></head>'</Script >",
        b"</head>",
        id="script-end-tag-boundary",
    ),
    pytest.param(
        b'<!doctype html><head><script><!--\ndocument.write("<script src=a></script>");'
        b"\n</head>//--></script>",
        b"</head>",
        id="script-double-escaped",
    ),
    pytest.param(
        b"<!doctype html><head><script><!--</script>", b"</head>", id="script-escaped-end"
    ),
    pytest.param(
        b"<!doctype html><head><script><!--></script>", b"</head>", id="script-escape-abrupt"
    ),
    pytest.param(
        b"<!doctype html><head><script src=a /></head><body></script>",
        b"</head>",
        id="script-self-closing-ignored",
    ),
    pytest.param(
        b'<!doctype html><head><style>a::after{content:"</head><body>"}</style>',
        b"</head>",
        id="style",
    ),
    pytest.param(b"<!doctype html><head><title></head><body></title >", b"</head>", id="title"),
    pytest.param(
        b"<!doctype html><head><title></titles></head></title>", b"</head>", id="title-end-boundary"
    ),
    pytest.param(
        b"<!doctype html><head><noscript></head><body><p>x</noscript>", b"</head>", id="noscript"
    ),
    pytest.param(b"<!doctype html><head><noframes></head></noframes>", b"</head>", id="noframes"),
    pytest.param(
        b"<!doctype html><head><template></head><body><div></div></template>",
        b"</head>",
        id="template",
    ),
    pytest.param(
        b"<!doctype html><head><template><template></template><p></p></template>",
        b"</head>",
        id="template-nested",
    ),
    pytest.param(
        b"<!doctype html><head><template><textarea></head></template></textarea></template>",
        b"</head>",
        id="textarea-in-template",
    ),
    pytest.param(
        b"<!doctype html><head><template><xmp></template></head></xmp></template>",
        b"</head>",
        id="xmp-in-template",
    ),
    pytest.param(
        b"<!doctype html><head><template><iframe></template></iframe><noembed></template>"
        b"</noembed></template>",
        b"</head>",
        id="iframe-noembed-in-template",
    ),
    pytest.param(
        b"<!doctype html><head><title>x</title>", b"<textarea></head></textarea>", id="textarea"
    ),
    pytest.param(b"<!doctype html><head>", b"<xmp></head></xmp>", id="xmp-closes-head"),
    pytest.param(
        b"<!doctype html><head><link href=\"a>b\" title='</head><body>'>",
        b"</head>",
        id="quoted-attributes",
    ),
    pytest.param(
        b'<!doctype html><head><link title = "</head>" a="x"b=\'>\'>',
        b"</head>",
        id="attribute-spacing",
    ),
    pytest.param(b"<!doctype html><head><meta content=a>", b"b</head>", id="unquoted-ends-tag"),
    pytest.param(b'<!doctype html><head><link a"b>', b'</head>">', id="quote-in-name-is-no-value"),
    pytest.param(b"<!doctype html><head><link a=b'c>", b"</head>'>", id="quote-in-unquoted-value"),
    pytest.param(b"<!doctype html><head><![CDATA[x]]>", b"</head>", id="cdata"),
    pytest.param(
        # Outside SVG/MathML "<![CDATA[" is a bogus comment: it ends at the first ">".
        b"<!doctype html><head><![CDATA[</head>",
        b"]]></head>",
        id="cdata-is-bogus-comment",
    ),
    pytest.param(b"<!doctype html><title>x</title>", b"<p>hi", id="no-head"),
    pytest.param(b"<!doctype html><title>x</title>", b"hello", id="implied-by-text"),
    pytest.param(b"<!doctype html>\n  ", b"hello", id="implied-by-text-after-ws"),
    pytest.param(b"<!doctype html><head>", b"&amp;", id="implied-by-reference"),
    pytest.param(b"<!doctype html><head>", b"< </head>", id="implied-by-lone-lt"),
    pytest.param(b"<!doctype html><head>", b"\xc3\xa9</head>", id="implied-by-utf8-text"),
    pytest.param(b"<!doctype html><head><title>x</title>", b"</body>", id="end-body"),
    pytest.param(b"<!doctype html><head>", b"</html>", id="end-html"),
    pytest.param(b"<!doctype html><head>", b"</br>", id="end-br"),
    pytest.param(b"<!doctype html><head></p></div><title>x</title>", b"</head>", id="end-ignored"),
    pytest.param(
        b"<!doctype html><html><head><html lang=en><head><base href=/><basefont><bgsound>"
        b"<link rel=x><meta charset=utf-8>",
        b"</head>",
        id="head-elements",
    ),
    pytest.param(b"<!doctype html>", b"", id="doctype-only"),
    pytest.param(b"<!doctype html>\n<html>\n<head>\n", b"", id="open-head-at-end"),
    pytest.param(b"<!doctype html>", b"<", id="lone-lt-at-end"),
    pytest.param(b"<!doctype html>", b"</", id="lone-lt-slash-at-end"),
    pytest.param(b"<!doctype html>", b'<div class="never finished', id="unfinished-body-tag"),
    pytest.param(b"\xef\xbb\xbf<!doctype html><head>", b"</head>", id="utf8-bom"),
    pytest.param(b"\xef\xbb\xbf<!DOCTYPE html>", b"", id="utf8-bom-doctype-only"),
    pytest.param(b"<html><head>", b"</head>", id="html-without-doctype"),
    pytest.param(b"<HTML\nlang=en>", b"<body>", id="html-upper-newline"),
    pytest.param(b"<html/>", b"<p>", id="html-slash"),
    pytest.param(b"<!doctypehtml>", b"<p>", id="doctype-no-space"),
    pytest.param(
        b"  \n<!-- generated --><!doctype html><head>", b"</head>", id="comment-before-doctype"
    ),
    pytest.param(
        b'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 '
        b'Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html xmlns='
        b'"http://www.w3.org/1999/xhtml"><head><title>x</title>',
        b"</head>",
        id="xhtml-with-xml-declaration",
    ),
    pytest.param(
        b"<!doctype html><head><meta charset=shift_jis><title>\x82\xa0</title>",
        b"</head>",
        id="ascii-compatible-charset",
    ),
]


@pytest.mark.parametrize(("before", "after"), INJECTED)
def test_injects_at_tokenizer_point(before: bytes, after: bytes) -> None:
    out, injector = inject(before + after, render)
    assert out == before + SNIPPET + after
    assert injector.done and injector.injected and injector.reason is None
    assert injector.added == len(SNIPPET)


# html5lib 1.1 predates <template> support: it parses a head <template> as body content,
# where browsers keep it (and its inert content) in the head. Those cases are left out here.
PARSED_BY_HTML5LIB = [p for p in INJECTED if b"<template" not in b"".join(p.values)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("before", "after"), PARSED_BY_HTML5LIB)
def test_injected_snippet_parses_into_head(before: bytes, after: bytes) -> None:
    assert parent_in_browser(before + SNIPPET + after) == "head"


@pytest.mark.parametrize(("before", "after"), INJECTED)
def test_every_two_chunk_split_gives_same_output(before: bytes, after: bytes) -> None:
    document = before + after
    expected = before + SNIPPET + after
    for i in range(len(document) + 1):
        assert run_chunks([document[:i], document[i:]])[0] == expected, i


@pytest.mark.parametrize(("before", "after"), INJECTED)
def test_one_byte_chunks_with_empty_chunks_give_same_output(before: bytes, after: bytes) -> None:
    document = before + after
    chunks = [b""]
    for i in range(len(document)):
        chunks += (document[i : i + 1], b"")
    assert run_chunks(chunks)[0] == before + SNIPPET + after


def test_every_three_chunk_split_of_anchors_gives_same_output() -> None:
    before = b"<!doctype html><head><!-- x --><script>a<!--<script></script>--></script>"
    after = b'</head ><body class="a>b">'
    document = before + after
    for i in range(len(document) + 1):
        for j in range(i, len(document) + 1):
            out = run_chunks([document[:i], document[i:j], document[j:]])[0]
            assert out == before + SNIPPET + after, (i, j)


SKIPPED = [
    pytest.param(b"<div>hi</div>", "fragment", id="div"),
    pytest.param(b"<p>", "fragment", id="p"),
    pytest.param(b'{"html": "<head></head>"}', "fragment", id="json"),
    pytest.param(b"hello </head>", "fragment", id="text"),
    pytest.param(b"", "fragment", id="empty"),
    pytest.param(b" \n\t", "fragment", id="whitespace"),
    pytest.param(b"<!-- only a comment -->", "fragment", id="comment-only"),
    pytest.param(b"<head><title>x</title></head><body></body>", "fragment", id="head-first"),
    pytest.param(b"<body><p>x</p></body>", "fragment", id="body-first"),
    pytest.param(b"<htmlx><head></head>", "fragment", id="htmlx"),
    pytest.param(b"<html", "fragment", id="html-unfinished"),
    pytest.param(b"<!docty", "fragment", id="doctype-unfinished"),
    pytest.param(b'<?xml version="1.0"?><rss><channel/></rss>', "fragment", id="xml"),
    pytest.param(b"</head><!doctype html>", "fragment", id="end-tag-first"),
    pytest.param(b"\xef\xbb\xbf<div>", "fragment", id="bom-fragment"),
    pytest.param(b"\xff\xfe<\x00h\x00t\x00m\x00l\x00>\x00", "utf16", id="utf16-le"),
    pytest.param(b"\xfe\xff\x00<\x00h\x00t\x00m\x00l\x00>", "utf16", id="utf16-be"),
    pytest.param(b"\xff\xfe\x00\x00<\x00\x00\x00", "utf16", id="utf32-le"),
    pytest.param(b"\x00\x00\xfe\xff\x00\x00\x00<", "utf16", id="utf32-be"),
    pytest.param(
        b'<!doctype html><head><script id="replay-middleware-config">{}</script></head>',
        "already_injected",
        id="marker-before-insertion-point",
    ),
    pytest.param(
        b"<!doctype html><head><!-- replay-middleware-config --><p>",
        "already_injected",
        id="marker-in-comment",
    ),
    pytest.param(b"<!doctype html><head><script>a", "no_insertion_point", id="eof-in-script"),
    pytest.param(b"<!doctype html><head><!-- a", "no_insertion_point", id="eof-in-comment"),
    pytest.param(b"<!doctype html><head><!-", "no_insertion_point", id="eof-in-comment-start"),
    pytest.param(b"<!doctype html><head><title>a", "no_insertion_point", id="eof-in-title"),
    pytest.param(b'<!doctype html><link href="a', "no_insertion_point", id="eof-in-head-tag"),
    pytest.param(b"<!doctype html><template><p>", "no_insertion_point", id="eof-in-template"),
    pytest.param(b"<!doctype html><?x", "no_insertion_point", id="eof-in-bogus-comment"),
]


@pytest.mark.parametrize(("document", "reason"), SKIPPED)
def test_skips_byte_identical(document: bytes, reason: str) -> None:
    out, injector = inject(document, render)
    assert out == document
    assert injector.done and not injector.injected
    assert injector.reason == reason
    assert injector.added == 0


@pytest.mark.parametrize(("document", "reason"), SKIPPED)
def test_skip_is_independent_of_chunking(document: bytes, reason: str) -> None:
    for i in range(len(document) + 1):
        out, injector = run_chunks([document[:i], document[i:]])
        assert (out, injector.reason) == (document, reason), i


def test_marker_after_insertion_point_does_not_skip() -> None:
    document = b"<!doctype html><head></head><body>replay-middleware-config</body>"
    out, injector = inject(document, render)
    assert injector.injected
    assert out == document.replace(b"</head>", SNIPPET + b"</head>")


def test_empty_marker_disables_the_already_injected_check() -> None:
    document = b"<!doctype html><head><!-- x --></head>"
    out, injector = inject(document, render, marker=b"")
    assert injector.injected
    assert out == document.replace(b"</head>", SNIPPET + b"</head>")


def test_fragment_is_decided_from_first_significant_bytes() -> None:
    injector = Injector(render)
    assert injector.feed(b"\xef\xbb\xbf  <!-- c --> <d") == b"\xef\xbb\xbf  <!-- c --> <d"
    assert injector.done and injector.reason == "fragment"


def test_document_start_is_held_until_it_is_decided() -> None:
    injector = Injector(render)
    assert injector.feed(b"<!-- c --><!DOC") == b""
    assert not injector.done
    assert injector.feed(b"TYPE html><head>") == b""
    assert injector.feed(b"</head>") == b"<!-- c --><!DOCTYPE html><head>" + SNIPPET + b"</head>"


def test_body_tag_is_decided_from_its_name_before_its_attributes_end() -> None:
    injector = Injector(render)
    assert injector.feed(b"<!doctype html><body ") == b"<!doctype html>" + SNIPPET + b"<body "
    assert injector.feed(b'data-x="...">') == b'data-x="...">'


def test_chunks_after_decision_are_returned_unchanged() -> None:
    injector = Injector(render)
    injector.feed(b"<!doctype html><head></head>")
    chunk = b"<body>" * 1000
    assert injector.feed(chunk) is chunk
    assert injector.feed(b"") == b""
    assert injector.close() == b""


def test_render_is_called_once_at_the_insertion_point() -> None:
    calls: list[tuple[MetaPolicy, ...]] = []

    def recording(metas: Sequence[MetaPolicy]) -> Insertion:
        calls.append(tuple(metas))
        return Insertion(SNIPPET)

    injector = Injector(recording)
    for chunk in (b"<!doctype html><head>", b"<title>x</title>", b"</he", b"ad><body>", b"x"):
        injector.feed(chunk)
        assert len(calls) == (1 if injector.done else 0)
    injector.close()
    assert calls == [()]


def test_render_reason_skips_byte_identical() -> None:
    document = b"<!doctype html><head></head><body></body>"
    out, injector = inject(document, lambda metas: "csp_meta_blocks")
    assert out == document
    assert (injector.done, injector.injected, injector.reason) == (True, False, "csp_meta_blocks")
    assert injector.added == 0


def test_render_error_propagates_and_held_bytes_are_released_unmodified() -> None:
    def failing(metas: Sequence[MetaPolicy]) -> Insertion:
        raise LookupError("boom")

    injector = Injector(failing)
    assert injector.feed(b"<!doctype html><head>") == b""
    with pytest.raises(LookupError, match="boom"):
        injector.feed(b"</head><body>")
    assert injector.done and not injector.injected and injector.reason == "render_error"
    assert injector.feed(b"x") == b"<!doctype html><head></head><body>x"
    assert injector.feed(b"y") == b"y"
    assert injector.close() == b""


def test_render_error_at_close_leaves_bytes_for_a_second_close() -> None:
    injector = Injector(lambda metas: Insertion(b"\xff"))
    assert injector.feed(b"<!doctype html>") == b""
    with pytest.raises(ValueError, match="ASCII"):
        injector.close()
    assert injector.reason == "render_error"
    assert injector.close() == b"<!doctype html>"


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(Insertion(SNIPPET, {0: b'"x"'}), id="index-out-of-range"),
        pytest.param(Insertion(SNIPPET, {-1: b'"x"'}), id="negative-index"),
        pytest.param(Insertion("<script>".encode("utf-16")), id="non-ascii-snippet"),
        pytest.param(Insertion(SNIPPET, {0: "é".encode()}), id="non-ascii-rewrite"),
    ],
)
def test_invalid_insertion_raises_value_error(result: Insertion) -> None:
    with pytest.raises(ValueError):
        inject(b"<!doctype html><head></head>", lambda metas: result)


def test_render_returning_other_type_raises_type_error() -> None:
    with pytest.raises(TypeError):
        inject(b"<!doctype html>", lambda metas: None)  # type: ignore[arg-type,return-value]


def test_feed_after_close_raises() -> None:
    injector = Injector(render)
    injector.feed(b"<!doctyp")
    assert injector.close() == b"<!doctyp"
    assert injector.reason == "fragment"
    assert injector.close() == b""
    with pytest.raises(RuntimeError):
        injector.feed(b"x")


def test_negative_scan_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_scan_bytes"):
        Injector(render, max_scan_bytes=-1)


# -- scan limit (H4) --------------------------------------------------------------------------

HEAD_END = b"<!doctype html><head><style>" + b"a{}" * 30 + b"</style></head><body>x</body>"


def test_scan_limit_releases_held_bytes_unmodified_and_streams_the_rest() -> None:
    injector = Injector(render, max_scan_bytes=64)
    assert injector.feed(HEAD_END[:40]) == b""
    assert injector.feed(HEAD_END[40:80]) == HEAD_END[:80]
    assert (injector.done, injector.injected, injector.reason) == (True, False, "scan_limit")
    rest = HEAD_END[80:]
    assert injector.feed(rest) is rest
    assert injector.close() == b""
    assert injector.added == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 65, 1000])
def test_scan_limit_decision_is_independent_of_chunking(chunk_size: int) -> None:
    chunks = [HEAD_END[i : i + chunk_size] for i in range(0, len(HEAD_END), chunk_size)]
    out, injector = run_chunks(chunks, max_scan_bytes=64)
    assert (out, injector.reason) == (HEAD_END, "scan_limit")


def test_insertion_point_exactly_at_scan_limit_is_found() -> None:
    document = b"<!doctype html><head></head>"  # the "</head" name ends at the final ">"
    out, injector = inject(document, render, max_scan_bytes=len(document))
    assert injector.injected
    out, injector = inject(document, render, max_scan_bytes=len(document) - 1)
    assert (out, injector.reason) == (document, "scan_limit")


def test_body_ending_within_scan_limit_is_decided_at_close() -> None:
    out, injector = run_chunks([b"<!doctype html>", b"<head>"], max_scan_bytes=21)
    assert out == b"<!doctype html><head>" + SNIPPET
    assert injector.injected


def test_body_longer_than_scan_limit_is_not_treated_as_ended() -> None:
    document = b"<!doctype html><head>"
    out, injector = inject(document, render, max_scan_bytes=len(document) - 1)
    assert (out, injector.reason) == (document, "scan_limit")


def test_zero_scan_limit_skips_everything_but_an_empty_body() -> None:
    assert inject(b"<!doctype html>", render, max_scan_bytes=0)[1].reason == "scan_limit"
    assert inject(b"", render, max_scan_bytes=0)[1].reason == "fragment"


def test_long_tag_split_into_tiny_chunks_is_scanned_once() -> None:
    # A 64 KiB attribute value arriving 16 bytes at a time: the pending tag is resumed, not
    # re-tokenized, so this takes milliseconds (rescanning it per chunk would take seconds).
    value = b"x>" * 32_768
    document = b'<!doctype html><head><link title="' + value + b'"></head>'
    chunks = [document[i : i + 16] for i in range(0, len(document), 16)]
    out, injector = run_chunks(chunks)
    assert out == document[:-7] + SNIPPET + b"</head>"
    assert injector.injected


# -- meta policies (SPEC C5) --------------------------------------------------------------------

CSP = b"default-src 'self'"


@pytest.mark.parametrize(
    ("meta", "content", "token"),
    [
        pytest.param(
            b'<meta http-equiv="Content-Security-Policy" content="default-src \'self\'">',
            "default-src 'self'",
            b"\"default-src 'self'\"",
            id="double-quoted",
        ),
        pytest.param(
            b"<meta content='script-src \"x\"' http-equiv='content-security-policy'>",
            'script-src "x"',
            b"'script-src \"x\"'",
            id="single-quoted",
        ),
        pytest.param(
            b"<META HTTP-EQUIV=CONTENT-SECURITY-POLICY CONTENT=default-src/>",
            "default-src/",
            b"default-src/",
            id="unquoted-upper",
        ),
        pytest.param(
            b'<meta http-equiv = "Content-Security-Policy"\n content = '
            b'"default-src &#39;self&#39; &amp; &quot;x&quot; &apos;y&apos;">',
            "default-src 'self' & \"x\" 'y'",
            b'"default-src &#39;self&#39; &amp; &quot;x&quot; &apos;y&apos;"',
            id="entities-and-spacing",
        ),
        pytest.param(
            b'<meta http-equiv="Content&#45;Security-Policy" content="a" content="b">',
            "a",
            b'"a"',
            id="escaped-name-first-duplicate-wins",
        ),
        pytest.param(
            b'<meta http-equiv="Content-Security-Policy" content="">', "", b'""', id="empty"
        ),
    ],
)
def test_meta_policy_is_collected_with_exact_value_offsets(
    meta: bytes, content: str, token: bytes
) -> None:
    seen: list[MetaPolicy] = []

    def recording(metas: Sequence[MetaPolicy]) -> Insertion:
        seen.extend(metas)
        return Insertion(SNIPPET)

    before = b"\xef\xbb\xbf<!doctype html><head><title>x</title>" + meta
    document = before + b"</head>"
    assert inject(document, recording)[0] == before + SNIPPET + b"</head>"
    assert len(seen) == 1
    assert seen[0].content == content
    assert document[seen[0].start : seen[0].end] == token


@pytest.mark.parametrize(
    "markup",
    [
        pytest.param(
            b'<meta http-equiv="Content-Security-Policy-Report-Only" content="x">', id="report-only"
        ),
        pytest.param(b'<meta http-equiv="Content-Security-Policy">', id="no-content"),
        pytest.param(b'<meta http-equiv="Content-Security-Policy" content>', id="content-no-value"),
        pytest.param(b'<meta name="Content-Security-Policy" content="x">', id="name-not-equiv"),
        pytest.param(b'<meta http-equiv="refresh" content="5">', id="other-pragma"),
        pytest.param(
            b'<template><meta http-equiv="Content-Security-Policy" content="x"></template>',
            id="in-template",
        ),
        pytest.param(
            b'<noscript><meta http-equiv="Content-Security-Policy" content="x"></noscript>',
            id="in-noscript",
        ),
        pytest.param(
            b'<!-- <meta http-equiv="Content-Security-Policy" content="x"> -->', id="in-comment"
        ),
    ],
)
def test_inactive_meta_is_not_collected(markup: bytes) -> None:
    seen: list[MetaPolicy] = []

    def recording(metas: Sequence[MetaPolicy]) -> Insertion:
        seen.extend(metas)
        return Insertion(SNIPPET)

    injector = inject(b"<!doctype html><head>" + markup + b"</head>", recording)[1]
    assert injector.injected and seen == []


def test_meta_after_insertion_point_is_not_collected() -> None:
    seen: list[MetaPolicy] = []

    def recording(metas: Sequence[MetaPolicy]) -> Insertion:
        seen.extend(metas)
        return Insertion(SNIPPET)

    inject(
        b'<!doctype html><head></head><meta http-equiv="Content-Security-Policy" content="x">',
        recording,
    )
    assert seen == []


def test_meta_rewrites_are_applied_and_counted_in_added() -> None:
    first = b'<meta http-equiv="Content-Security-Policy" content="a">'
    second = b"<meta http-equiv=content-security-policy content='b'>"
    third = b"<meta http-equiv=Content-Security-Policy content=c>"
    document = b"<!doctype html><head>" + first + second + third + b"</head><body>"

    def rewriting(metas: Sequence[MetaPolicy]) -> Insertion:
        assert [m.content for m in metas] == ["a", "b", "c"]
        return Insertion(SNIPPET, {2: b'"c; x"', 0: b'"a &amp; x"'})

    out, injector = inject(document, rewriting)
    assert out == (
        b'<!doctype html><head><meta http-equiv="Content-Security-Policy" content="a &amp; x">'
        + second
        + b'<meta http-equiv=Content-Security-Policy content="c; x">'
        + SNIPPET
        + b"</head><body>"
    )
    assert injector.added == len(out) - len(document)


@pytest.mark.parametrize("size", [1, 2, 5, 13])
def test_meta_rewrites_are_independent_of_chunking(size: int) -> None:
    document = (
        b"<!doctype html><head><meta http-equiv='Content-Security-Policy' content='a'>"
        b"<title>x</title></head>"
    )

    def rewriting(metas: Sequence[MetaPolicy]) -> Insertion:
        return Insertion(SNIPPET, {0: b'"rewritten"'})

    injector = Injector(rewriting)
    out = b"".join(injector.feed(document[i : i + size]) for i in range(0, len(document), size))
    out += injector.close()
    assert out == inject(document, rewriting)[0]
    assert b'content="rewritten"><title>' in out
    assert injector.added == len(out) - len(document)


def test_added_matches_length_difference() -> None:
    document = b"<!doctype html><head><title>x</title></head><body>" + b"y" * 5000
    out, injector = inject(document, lambda metas: Insertion(b"<script src=/a.js></script>"))
    assert injector.added == len(out) - len(document) == len(b"<script src=/a.js></script>")


def test_inject_returns_injector_state() -> None:
    out, injector = inject(b"<!doctype html>", render)
    assert out == b"<!doctype html>" + SNIPPET
    assert injector.done and injector.injected and injector.reason is None
