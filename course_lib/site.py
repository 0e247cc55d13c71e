"""The course as a static web site, from the committed notebooks' outputs (nothing is re-executed).

    python -m course_lib.site [--out site]      # or `make site`; then open site/index.html

One page per solved notebook (nbconvert's JupyterLab template) with a bar linking the course index and the
previous and next notebooks, and a table of contents of its headings; the README as the index page, the
instructor guide and the data sources as pages of their own. Links between notebooks and these documents point
at their pages. Interactive widgets need a live Python kernel, so each one is replaced by a note saying where
to use it; progress bars are dropped (what they measured is printed next to them).
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from course_lib.data import PROJECT_ROOT
from course_lib.notebooks import solved_notebooks

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's text: "epoch 1/4:  25%|██▌  | 1/4 [...]"
_HEADING = re.compile(r'<h([1-3]) id="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
_LINK = re.compile(r'(href|src)="([^"#:]+\.(?:ipynb|md))(#[^"]*)?"')
SITE_CSS = """
.course-nav { position: sticky; top: 0; z-index: 10; display: flex; gap: 1.5em; align-items: center;
  padding: 0.6em 1.2em; background: #f5f5f5; border-bottom: 1px solid #ccc; font: 15px/1.4 sans-serif; }
.course-nav a { color: #0b5cad; text-decoration: none; } .course-nav a:hover { text-decoration: underline; }
.course-nav .title { font-weight: bold; margin-right: auto; }
.course-toc { font: 14px/1.5 sans-serif; margin: 1em 1.2em; padding: 0.6em 1em; border: 1px solid #ddd;
  border-radius: 4px; background: #fafafa; } .course-toc ul { margin: 0.2em 0; } .course-toc a { color: #0b5cad; }
.course-widget-note { border-left: 4px solid #e69f00; background: #fff8e6; padding: 0.5em 0.8em;
  font: 14px/1.4 sans-serif; }
.course-doc .anchor-link { visibility: hidden; margin-left: 0.3em; text-decoration: none; }
.course-doc :is(h1, h2, h3):hover .anchor-link { visibility: visible; }
.course-doc { max-width: 60em; margin: 1em auto; padding: 0 1.2em; font: 16px/1.55 sans-serif; }
.course-doc table { border-collapse: collapse; } .course-doc td, .course-doc th { border: 1px solid #ccc;
  padding: 0.25em 0.5em; } .course-doc pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
"""


@dataclass(frozen=True)
class Page:
    source: Path  # relative to the project root
    target: str  # file name in the site
    title: str


def course_pages() -> list[Page]:
    """Every page of the site: the README (index), the notebooks in order, the instructor guide, the data sources."""
    pages = [Page(Path("README.md"), "index.html", "Course home")]
    for path in solved_notebooks():
        notebook = nbformat.read(str(path), as_version=4)
        first = notebook.cells[0].source.splitlines()[0].lstrip("# ").strip()
        pages.append(Page(path.relative_to(PROJECT_ROOT), path.stem + ".html", first))
    for source, target, title in ((Path("docs/INSTRUCTOR.md"), "instructor.html", "Instructor guide"),
                                  (Path("data/README.md"), "data.html", "Data and weights")):
        if (PROJECT_ROOT / source).exists():
            pages.append(Page(source, target, title))
    return pages


def site_ready(notebook: nbformat.NotebookNode, source: Path) -> nbformat.NotebookNode:
    """A copy of ``notebook`` for a static page: widgets become a note, progress bars go, widget state goes."""
    notebook = nbformat.from_dict(notebook)
    notebook.metadata.pop("widgets", None)
    note = nbformat.v4.new_output("display_data", data={"text/html": (
        '<div class="course-widget-note"><strong>Interactive widget.</strong> It needs a live Python kernel: '
        f"open <code>{source.as_posix()}</code> in JupyterLab (<code>make lab</code>) and run the notebook to "
        "use it.</div>")})
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                outputs.append(output)
            elif not _PROGRESS_BAR.search(data.get("text/plain", "")):
                outputs.append(note)
        cell.outputs = outputs
    return notebook


def rewrite_links(page_html: str, source: Path, pages: list[Page]) -> str:
    """Point links to the course's notebooks and documents at their pages in the site."""
    by_source = {page.source.as_posix(): page.target for page in pages}

    def rewrite(match: re.Match) -> str:
        attribute, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        resolved = (PROJECT_ROOT / source.parent / target).resolve()
        try:
            key = resolved.relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            return match.group(0)
        if key.startswith("notebooks/student/"):
            key = "notebooks/" + key.removeprefix("notebooks/student/")
        return f'{attribute}="{by_source[key]}{anchor}"' if key in by_source else match.group(0)

    return _LINK.sub(rewrite, page_html)


def github_anchors(page_html: str) -> str:
    """Give each heading the anchor GitHub gives it too ("## For teachers" -> ``#for-teachers``), so that links
    written for the repository's Markdown also work in the site."""

    def add(match: re.Match) -> str:
        text = re.sub(r"<[^>]+>", "", match.group(3)).replace("¶", "").strip()
        slug = re.sub(r"[^\w\- ]", "", html.unescape(text).lower()).replace(" ", "-")
        return f'<a id="{slug}"></a>{match.group(0)}' if slug != match.group(2) else match.group(0)

    return _HEADING.sub(add, page_html)


def table_of_contents(page_html: str) -> str:
    """A nested list of the page's h2/h3 headings, linking their anchors."""
    items = []
    for level, anchor, text in _HEADING.findall(page_html):
        if level == "1":
            continue
        label = re.sub(r"<[^>]+>", "", text).replace("¶", "").strip()
        indent = ' style="margin-left:1.5em"' if level == "3" else ""
        items.append(f'<li{indent}><a href="#{anchor}">{label}</a></li>')
    return f'<nav class="course-toc" aria-label="Contents"><strong>Contents</strong><ul>{"".join(items)}</ul></nav>'


def navigation(index: int, pages: list[Page]) -> str:
    """The bar on top of every page: the course index, and the previous and next notebooks."""
    notebooks = [i for i, page in enumerate(pages) if page.source.suffix == ".ipynb"]
    links = ['<span class="title"><a href="index.html">Neural network compression, hands-on</a></span>']
    if index in notebooks:
        position = notebooks.index(index)
        if position > 0:
            links.append(f'<a href="{pages[notebooks[position - 1]].target}" rel="prev">← previous</a>')
        if position + 1 < len(notebooks):
            links.append(f'<a href="{pages[notebooks[position + 1]].target}" rel="next">next →</a>')
    links.append('<a href="instructor.html">for teachers</a>' if any(p.target == "instructor.html" for p in pages)
                 else "")
    return f'<nav class="course-nav" aria-label="Course">{"".join(links)}</nav>'


def _inject(page_html: str, head: str, body_top: str) -> str:
    page_html = page_html.replace("</head>", f"<style>{SITE_CSS}</style>{head}</head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + body_top, page_html, count=1)


def render_notebook(page: Page, index: int, pages: list[Page]) -> str:
    """The HTML page of one notebook."""
    from nbconvert import HTMLExporter

    notebook = site_ready(nbformat.read(str(PROJECT_ROOT / page.source), as_version=4), page.source)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook, resources={"metadata": {
        "name": page.title}})
    body = rewrite_links(body, page.source, pages)
    return _inject(body, "", navigation(index, pages) + table_of_contents(body))


def render_markdown(page: Page, index: int, pages: list[Page]) -> str:
    """The HTML page of one Markdown document."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = github_anchors(markdown2html_mistune((PROJECT_ROOT / page.source).read_text()))
    body = rewrite_links(body, page.source, pages)
    if page.target == "index.html":
        listed = "".join(f'<li><a href="{p.target}">{html.escape(p.title)}</a></li>' for p in pages
                         if p.source.suffix == ".ipynb")
        body = f'<nav class="course-toc" aria-label="Notebooks"><strong>The notebooks</strong><ol start="0">{listed}</ol></nav>' + body
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{SITE_CSS}</style></head>'
            f'<body>{navigation(index, pages)}<main class="course-doc">{body}</main></body></html>\n')


def build_site(out: Path) -> list[Path]:
    """Write every page into ``out`` (replacing it whole: built beside it, then renamed). Returns the pages."""
    pages = course_pages()
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a site is for reading
    try:
        for index, page in enumerate(pages):
            render = render_notebook if page.source.suffix == ".ipynb" else render_markdown
            (staging / page.target).write_text(render(page, index, pages), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / page.target for page in pages]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the course's static web site from the committed notebooks.")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "site")
    args = parser.parse_args(argv)
    written = build_site(args.out)
    print(f"wrote {len(written)} pages to {args.out}/ (open {args.out / 'index.html'})")


if __name__ == "__main__":
    main()
