"""The documentation keeps up with the code: links resolve, and every option is named.

In: README.md, docs/*.md and the tutorials' markdown cells, read as text (fenced blocks and
inline code left out, as GitHub renders neither as a link); the magics' real parsers (IPython's
``magic_arguments`` on :class:`AmlDebugMagics`), its ``config=True`` traitlets, and the node's
bootstrap's ``--help``. Out: one failure per broken link or unnamed option, naming it. An anchor
(``page.md#heading``) must match a heading of that page by GitHub's slug rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from aml_debug_magics.magics import AmlDebugMagics

DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *DOCS.glob("*.md")])
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target), ![alt](target)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_TARGET = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def prose(markdown: str) -> str:
    """The markdown without fenced blocks and inline code: what can hold a link."""
    kept, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return CODE_SPAN.sub("", "\n".join(kept))


def link_targets(markdown: str) -> list[str]:
    text = prose(markdown)
    return [*LINK.findall(text), *REFERENCE.findall(text), *HTML_TARGET.findall(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped (``-`` and
    ``_`` kept), spaces made ``-``.

    >>> slug("On Azure ML compute: `--target azureml`")
    'on-azure-ml-compute---target-azureml'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> list[str]:
    """Every heading's anchor in ``page``; a repeated one gets ``-1``, ``-2``... as on GitHub."""
    found: list[str] = []
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            found.append(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def broken(source: Path, target: str) -> str | None:
    """Why the link ``target`` in ``source`` does not resolve, or None."""
    path_part, _, anchor = target.partition("#")
    place = (source.parent / path_part).resolve() if path_part else source
    shown = f"{source.relative_to(REPO)}: link {target!r}"
    if not place.exists():
        where = place.relative_to(REPO) if place.is_relative_to(REPO) else place
        return f"{shown}: no file {where}"
    if anchor and place.suffix == ".md":
        known = anchors(place)
        if anchor not in known:
            return (f"{shown}: no heading with anchor #{anchor} in "
                    f"{place.relative_to(REPO)} (its anchors: {', '.join(known)})")
    return None


def relative(targets: list[str]) -> list[str]:
    return [t for t in targets if not EXTERNAL.match(t)]


def documentation() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def named(option: str, text: str) -> bool:
    """``--via`` counts where it stands as a word of its own, not inside ``--via-x``."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def magic_options() -> dict[str, set[str]]:
    """Each magic's long options, from the parser ``magic_arguments`` built on it."""
    options: dict[str, set[str]] = {}
    for name in sorted(dir(AmlDebugMagics)):
        parser = getattr(getattr(AmlDebugMagics, name), "parser", None)
        if parser is None:
            continue
        options[f"%{name}"] = {
            flag for action in parser._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"
        }
    return options


def markdown_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_the_pages_exist_and_the_readme_links_each():
    readme = relative(link_targets((REPO / "README.md").read_text(encoding="utf-8")))
    linked = {(REPO / t.partition("#")[0]).resolve() for t in readme}
    pages = [p for p in PAGES if p.parent == DOCS]
    assert len(pages) >= 10, f"docs/ holds {len(pages)} pages"
    unlinked = [p.name for p in pages if p.resolve() not in linked]
    assert not unlinked, f"README.md links no docs/{', docs/'.join(unlinked)}"
    assert (REPO / "docs/panel.png").resolve() in linked, "README.md shows no docs/panel.png"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    failures = [
        why for page in PAGES
        for target in relative(link_targets(page.read_text(encoding="utf-8")))
        if (why := broken(page, target))
    ]
    assert not failures, "\n".join(failures)


def test_every_option_of_every_magic_is_named_in_the_docs():
    text = documentation()
    options = magic_options()
    assert {"%aml_debug_pipeline", "%aml_debug_run", "%aml_debug_job",
            "%aml_debug_deploy"} <= set(options), f"magics with a parser: {sorted(options)}"
    missing = [f"{magic} {option}" for magic, flags in options.items() for option in sorted(flags)
               if not named(option, text)]
    assert not missing, "options named nowhere in README.md or docs/: " + ", ".join(missing)


def test_every_setting_of_aml_debug_magics_is_named_in_the_docs():
    text = documentation()
    settings = sorted(AmlDebugMagics.class_traits(config=True))
    assert "timeout" in settings and "via" in settings
    missing = [f"AmlDebugMagics.{name}" for name in settings
               if not named(f"AmlDebugMagics.{name}", text)]
    assert not missing, "settings named nowhere in README.md or docs/: " + ", ".join(missing)


def test_every_option_of_the_nodes_bootstrap_is_named_in_the_docs():
    shown = subprocess.run(
        [sys.executable, "-m", "aml_debug_magics.node.bootstrap", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", shown)) - {"--help"}
    assert {"--listen", "--timeout", "--reattach-window"} <= flags, shown
    text = documentation()
    missing = sorted(flag for flag in flags if not named(flag, text))
    assert not missing, "bootstrap options named nowhere in README.md or docs/: " + ", ".join(
        missing)


def test_every_tutorial_links_a_docs_page_and_its_links_resolve():
    assert NOTEBOOKS
    failures = []
    for notebook in NOTEBOOKS:
        targets = relative(link_targets(markdown_of(notebook)))
        failures += [why for target in targets if (why := broken(notebook, target))]
        pages = {(notebook.parent / t.partition("#")[0]).resolve() for t in targets}
        if not any(page.parent == DOCS.resolve() and page.suffix == ".md" for page in pages):
            failures.append(f"{notebook.relative_to(REPO)}: links no page of docs/")
    assert not failures, "\n".join(failures)


def test_the_checks_see_what_github_renders():
    """The link and heading readers themselves: code is no link, a repeated heading is
    numbered, and a missing anchor or file is named."""
    page = "See [a](x.md) and ![b\nc](y.png), not `[d](z.md)`.\n```\n[e](w.md)\n```\n[f]: v.md\n"
    assert link_targets(page) == ["x.md", "y.png", "v.md"]
    assert slug("SDK v2: `%aml_debug_job`") == "sdk-v2-aml_debug_job"
    assert slug("The node's bootstrap: `aml-debug: error:` lines") == (
        "the-nodes-bootstrap-aml-debug-error-lines")
    readme = REPO / "README.md"
    assert "no file" in broken(readme, "docs/nowhere.md")
    assert "no heading with anchor #nowhere" in broken(readme, "docs/setup.md#nowhere")
    assert broken(readme, "docs/setup.md") is None
    assert named("--via", "use --via storage") and not named("--via", "use --via-x")
