"""A long article of varied text, the same in every example: ``/article?kb=150``.

Real pages are long: a full snapshot of a 150 KB page is far over the 64 KiB that a browser
lets a page send while it unloads (docs/page-exit.md), so the examples keep one page of a
chosen size to show (and the browser suites to check) that such a page replays with its content.
The text is generated from a seed, so a size always gives the same page; its last paragraph
says ``END_MARKER``.
"""

from __future__ import annotations

import random

#: The last paragraph's text: a replay that holds it holds the whole page.
END_MARKER = "End of the article."
DEFAULT_KB = 150
MAX_KB = 2048

_SUBJECTS = (
    "The harbour master",
    "A travelling botanist",
    "Our night editor",
    "The old lighthouse",
    "Every spring tide",
    "The village archivist",
    "A quiet engineer",
    "The copper mine",
    "The ferry to the island",
    "A young cartographer",
    "The weather station",
    "The orchard",
)
_VERBS = (
    "records",
    "remembers",
    "measures",
    "describes",
    "repairs",
    "follows",
    "questions",
    "catalogues",
    "sketches",
    "outlasts",
    "translates",
    "collects",
)
_OBJECTS = (
    "the shape of the northern coast",
    "a ledger of forgotten cargo",
    "the salt in the wind",
    "seventeen kinds of moss",
    "the letters of a lost captain",
    "the tides of late autumn",
    "a map drawn on sailcloth",
    "the songs of the net menders",
    "the colour of the cliffs",
    "the price of lamp oil in 1891",
    "every bell in the valley",
    "the paths of migrating geese",
)
_TAILS = (
    "before the first frost",
    "while the town sleeps",
    "with remarkable patience",
    "in a careful, slanted hand",
    "for reasons nobody recalls",
    "against all advice",
    "under a sky the colour of slate",
    "as the ferry horn sounds twice",
)


def _sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
        f"{rng.choice(_TAILS)}, and counts {rng.randint(2, 9999)} of them."
    )


def article_kb(raw: str | None) -> int:
    """The size asked for in ``?kb=``, clamped to 1..MAX_KB (DEFAULT_KB when absent or bad)."""
    try:
        kb = int(raw) if raw is not None else DEFAULT_KB
    except ValueError:
        kb = DEFAULT_KB
    return max(1, min(kb, MAX_KB))


def article_html(kb: int) -> str:
    """About ``kb`` KiB of HTML: numbered sections of paragraphs, then the end paragraph."""
    rng = random.Random(kb)
    parts: list[str] = []
    size = 0
    section = 0
    while size < kb * 1024:
        section += 1
        paragraphs = "".join(
            "<p>" + " ".join(_sentence(rng) for _ in range(rng.randint(3, 7))) + "</p>\n"
            for _ in range(rng.randint(2, 5))
        )
        part = f"<h2>Section {section}</h2>\n{paragraphs}"
        parts.append(part)
        size += len(part)
    parts.append(f'<p id="end">{END_MARKER}</p>\n')
    return "".join(parts)
