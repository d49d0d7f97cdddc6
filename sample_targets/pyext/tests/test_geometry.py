"""The package's own tests: they leave ellipse_area, negative sides and describe's other
branches unexercised, so that a report has something to show missing."""

import geometry


def test_square():
    assert geometry.square_area(3) == 9.0


def test_perimeter_clamps_negative_sides():
    assert geometry.polygon_perimeter([1, 2, -5, 3]) == 6.0


def test_describe_square():
    assert geometry.describe("square") == "four equal sides"
