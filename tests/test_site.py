"""The static course site: a page per notebook, links that resolve, no missing image, widgets explained."""

from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from course_lib import site
from course_lib.notebooks import solved_notebooks


class _Page(HTMLParser):
    """The links, images and element ids of one page."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    written = site.build_site(out)
    pages = {}
    for path in written:
        parser = _Page()
        parser.feed(path.read_text(encoding="utf-8"))
        pages[path.name] = parser
    return out, written, pages


def test_every_notebook_has_a_page_and_the_index_lists_them(built):
    out, written, pages = built
    names = {path.name for path in written}
    expected = {p.stem + ".html" for p in solved_notebooks()} | {"index.html", "instructor.html", "data.html"}
    assert names == expected == {p.name for p in out.iterdir()}
    assert {p.stem + ".html" for p in solved_notebooks()} <= set(pages["index.html"].links)


def test_internal_links_and_anchors_resolve(built):
    out, _, pages = built
    for name, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("mailto:"):
                continue
            target = parts.path or name
            assert (out / target).is_file(), f"{name} links to missing {link}"
            if parts.fragment:
                assert unquote(parts.fragment) in pages[target].ids or parts.fragment in pages[target].ids, \
                    f"{name} links to missing anchor {link}"


def test_no_image_is_missing(built):
    out, _, pages = built
    images = [(name, src) for name, page in pages.items() for src in page.images]
    assert len(images) >= 30, "the notebooks' figures are on their pages"
    for name, src in images:
        assert src.startswith("data:image/") or (out / src).is_file(), f"{name}: missing image {src[:80]}"


def test_previous_and_next_link_the_notebooks_in_order(built):
    _, _, pages = built
    order = [p.stem + ".html" for p in solved_notebooks()]
    for before, after in zip(order, order[1:]):
        assert after in pages[before].links and before in pages[after].links


def test_each_page_has_a_table_of_contents(built):
    out, _, pages = built
    for notebook in solved_notebooks():
        page = pages[notebook.stem + ".html"]
        anchors = [link for link in page.links if link.startswith("#")]
        assert len(anchors) >= 3 and all(unquote(a[1:]) in page.ids or a[1:] in page.ids for a in anchors)


def test_widgets_become_a_note_and_progress_bars_go():
    notebook = nbformat.read(str(solved_notebooks()[4]), as_version=4)
    ready = site.site_ready(notebook, solved_notebooks()[4].relative_to(site.PROJECT_ROOT))
    views = [o for c in ready.cells if c.cell_type == "code" for o in c.outputs if site.WIDGET_VIEW in o.get("data", {})]
    notes = [o for c in ready.cells if c.cell_type == "code" for o in c.outputs
             if "course-widget-note" in o.get("data", {}).get("text/html", "")]
    assert not views and "widgets" not in ready.metadata
    assert len(notes) == 1 and "needs a live Python kernel" in notes[0]["data"]["text/html"]
    assert "widgets" in notebook.metadata, "the committed notebook is left alone"


def test_links_to_student_copies_and_documents_are_rewritten():
    pages = site.course_pages()
    html = ('<a href="02_quantization.ipynb#Exercise">x</a> <a href="student/03_pruning.ipynb">y</a> '
            '<a href="../data/README.md">z</a> <a href="https://example.org/a.ipynb">w</a>')
    rewritten = site.rewrite_links(html, site.Path("notebooks/01_data_flow.ipynb"), pages)
    assert 'href="02_quantization.html#Exercise"' in rewritten and 'href="03_pruning.html"' in rewritten
    assert 'href="data.html"' in rewritten and 'href="https://example.org/a.ipynb"' in rewritten
