"""The pages' one way to make markup: every field escaped, only Html inserted as it is."""

from types import SimpleNamespace

import pytest

from saekit.browser.fmt import Html, esc, html, join, token_text, url_part

HOSTILE = '"><script>alert(1)</script><!--'
ESCAPED = "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!--"


def test_every_kind_of_field_is_escaped():
    row = SimpleNamespace(name=HOSTILE, n=1234)
    out = html('<td title="{}">{x}{0}{r.name}{r.n:,}{y!r}</td>', HOSTILE, x=HOSTILE, r=row, y=HOSTILE)
    assert out == f'<td title="{ESCAPED}">{ESCAPED}{ESCAPED}{ESCAPED}1,234{esc(repr(HOSTILE))}</td>'
    assert isinstance(out, Html)


def test_values_of_any_type_are_escaped_after_formatting():
    class Sneaky:
        def __format__(self, spec: str) -> str:
            return "<b>"

    assert html("{}|{}|{}|{}", Sneaky(), None, [HOSTILE], 2.5) == "&lt;b&gt;|None|[&#x27;&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!--&#x27;]|2.5"


def test_markup_goes_in_as_it_is_and_only_markup():
    inner = html("<b>{}</b>", HOSTILE)
    assert html("<p>{}</p>", inner) == f"<p><b>{ESCAPED}</b></p>"
    assert html("<p>{}</p>", str(inner)) == f"<p>&lt;b&gt;{esc(ESCAPED)}&lt;/b&gt;</p>"  # a plain str is text
    assert join([inner, HOSTILE], ", ") == f"<b>{ESCAPED}</b>, {ESCAPED}"
    with pytest.raises(ValueError, match="format spec"):
        html("{:>10}", inner)


def test_tokens_and_links():
    assert token_text("<a>\n") == "&lt;a&gt;↵"
    # a name can never become a scheme, another folder or a broken attribute
    assert url_part("javascript:alert(1)") == "javascript%3Aalert%281%29"
    assert url_part('../"x') == "..%2F%22x"
