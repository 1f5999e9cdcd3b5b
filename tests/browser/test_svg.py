"""The inline line chart: one polyline per run of finite values, a titled dot per value, a y range over
the values and the span asked for, and every label escaped."""

import math
import re

from browser_helpers import HOSTILE, RAW_MARKUP

from saekit.browser.svg import Line, line_chart_svg

NAN = math.nan


def test_non_finite_values_break_the_curve_and_get_no_dot():
    svg = line_chart_svg([Line("a", [0.1, 0.2, NAN, 0.4, 0.5, math.inf, 0.7], "#000")], list("pqrstuv"), aria="x")
    assert svg.count("<polyline") == 2  # p-q and s-t; v alone is a dot only
    assert svg.count("<circle") == 5 and "<title>v: a 0.7</title>" in svg
    assert "nan" not in svg and "inf" not in svg


def test_the_y_range_spans_the_values_and_the_included_span():
    svg = line_chart_svg([Line("a", [0.2, 0.4], "#000")], ["p", "q"], aria="x", include=(0.0, 1.0))
    assert '<text x="40" y="28" font-size="10" text-anchor="end">1</text>' in svg
    assert '<text x="40" y="128" font-size="10" text-anchor="end">0</text>' in svg
    wide = line_chart_svg([Line("a", [-0.5, 2.0], "#000")], ["p", "q"], aria="x", include=(0.0, 1.0))
    assert ">2</text>" in wide and ">-0.5</text>" in wide and 'stroke-dasharray="3 3"' in wide  # the zero line
    flat = line_chart_svg([Line("a", [NAN, NAN], "#000")], ["p", "q"], aria="x")
    assert "<circle" not in flat and ">1</text>" in flat  # no value: a unit range, not a division by zero


def test_points_lie_where_their_values_say():
    svg = line_chart_svg([Line("a", [0.0, 1.0], "#000")], ["p", "q"], aria="x", width=154, height=142)
    # x from 44 to 144, y from 20 (1.0) to 120 (0.0)
    assert re.search(r'points="44\.0,120\.0 144\.0,20\.0"', svg)


def test_the_marker_is_drawn_only_inside_the_chart():
    assert 'class="marker"' in line_chart_svg([Line("a", [1, 2], "#000")], ["p", "q"], aria="x", marker=1, marker_title="m")
    for outside in (None, 2, -1):
        assert "marker" not in line_chart_svg([Line("a", [1, 2], "#000")], ["p", "q"], aria="x", marker=outside)


def test_every_label_is_escaped():
    svg = line_chart_svg(
        [Line(HOSTILE, [0.1, 0.2], HOSTILE)], [HOSTILE, "x" * 40 + HOSTILE], aria=HOSTILE, marker=0, marker_title=HOSTILE
    )
    assert not any(raw in svg for raw in RAW_MARKUP)
    assert svg.count("&lt;meta") >= 6  # legend, colour, aria label, marker title, first label, each dot's title
