"""A squarified treemap (Bruls, Huizing, van Wijk 2000) of machine code, area proportional
to bytes, in three levels: object -> source file -> function, or object -> folder -> file.
Pure geometry, so it is tested without HTML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Rect:
    x: float
    y: float
    w: float
    h: float


def _worst(row: list[float], side: float) -> float:
    total = sum(row)
    if total <= 0 or side <= 0:
        return float("inf")
    return max(max(side * side * r / (total * total), (total * total) / (side * side * r)) for r in row if r > 0)


def squarify(values: list[float], box: Rect) -> list[Rect]:
    """Rectangles filling `box`, one per value (values sorted largest first), area ∝ value."""
    total = sum(values)
    if total <= 0 or box.w <= 0 or box.h <= 0:
        return [Rect(box.x, box.y, 0, 0) for _ in values]
    areas = [v * box.w * box.h / total for v in values]
    x, y, w, h = box.x, box.y, box.w, box.h
    rects: list[Rect] = []
    i = 0
    while i < len(areas):
        side = min(w, h)
        row = [areas[i]]
        j = i + 1
        while j < len(areas) and _worst(row + [areas[j]], side) <= _worst(row, side):
            row.append(areas[j])
            j += 1
        s = sum(row)
        if w >= h:  # a column along the left edge
            cw = s / h if h else 0
            cy = y
            for a in row:
                rh = a / cw if cw else 0
                rects.append(Rect(x, cy, cw, rh))
                cy += rh
            x, w = x + cw, max(0.0, w - cw)
        else:  # a row along the top edge
            rh = s / w if w else 0
            cx = x
            for a in row:
                rw = a / rh if rh else 0
                rects.append(Rect(cx, y, rw, rh))
                cx += rw
            y, h = y + rh, max(0.0, h - rh)
        i = j
    return rects


@dataclass
class Leaf:
    """What an innermost tile stands for: a function, or (in a big report) a whole file."""
    size: int
    label: str
    title: str           # tooltip
    status: str          # a CSS class: hit / unhit / unmeasured, or a file's coverage band
    href: str = ""
    klass: str = ""      # a never-executed function's pruning class (prune/plan.py), if known


@dataclass
class Tile:
    rect: Rect
    level: int           # 0 outer group, 1 inner group, 2 leaf
    label: str
    title: str
    status: str          # the leaf's; "" for groups
    href: str = ""
    klass: str = ""


# A tile smaller than this (in px²) is not drawn: no one can see or click it, and at a
# million functions the drawn ones would otherwise grow the page without bound.
MIN_AREA = 1.0


def layout(groups: list[tuple[str, list[tuple[str, list[Leaf]]]]], width: float, height: float,
           pad: float = 2.0, header: float = 14.0) -> list[Tile]:
    """Tiles for `groups` = [(outer label, [(inner label, [Leaf…])…])…]: object, then
    file, then function; or object, then folder, then file."""
    tiles: list[Tile] = []

    def inner(r: Rect, with_header: bool) -> Rect:
        top = header if with_header and r.h > header * 2 and r.w > 40 else 0
        return Rect(r.x + pad, r.y + pad + top, max(0.0, r.w - 2 * pad), max(0.0, r.h - 2 * pad - top))

    sized = [(label, members, sum(leaf.size for _, leaves in members for leaf in leaves))
             for label, members in groups]
    outer = sorted([o for o in sized if o[2] > 0], key=lambda o: -o[2])
    for (label, members, size), orect in zip(outer, squarify([o[2] for o in outer], Rect(0, 0, width, height))):
        tiles.append(Tile(orect, 0, label, f"{label}: {size:,} bytes", ""))
        sized_members = [(ml, leaves, sum(leaf.size for leaf in leaves)) for ml, leaves in members]
        by_size = sorted([m for m in sized_members if m[2] > 0], key=lambda m: -m[2])
        for (mlabel, leaves, msize), mrect in zip(by_size, squarify([m[2] for m in by_size], inner(orect, True))):
            if mrect.w * mrect.h < MIN_AREA:
                continue
            tiles.append(Tile(mrect, 1, mlabel, f"{mlabel}: {msize:,} bytes", ""))
            drawn = sorted([leaf for leaf in leaves if leaf.size > 0], key=lambda leaf: -leaf.size)
            for leaf, rect in zip(drawn, squarify([leaf.size for leaf in drawn], inner(mrect, True))):
                if rect.w < 0.5 or rect.h < 0.5 or rect.w * rect.h < MIN_AREA:
                    continue
                tiles.append(Tile(rect, 2, leaf.label, leaf.title, leaf.status, leaf.href, leaf.klass))
    return tiles
