"""A squarified treemap (Bruls, Huizing, van Wijk 2000) of machine code: object -> source
file -> function, area proportional to bytes. Pure geometry, so it is tested without HTML."""

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
class Tile:
    rect: Rect
    level: int           # 0 object, 1 file, 2 function
    label: str
    title: str           # tooltip
    status: str          # for functions: hit / unhit / unmeasured; "" for groups
    href: str = ""
    klass: str = ""      # a never-executed function's pruning class (prune/plan.py), if known


def layout(groups: list[tuple[str, list[tuple[str, list]]]], width: float, height: float,
           pad: float = 2.0, header: float = 14.0) -> list[Tile]:
    """Tiles for `groups` = [(object label, [(file label, [FunctionRow…])…])…]."""
    tiles: list[Tile] = []

    def inner(r: Rect, with_header: bool) -> Rect:
        top = header if with_header and r.h > header * 2 and r.w > 40 else 0
        return Rect(r.x + pad, r.y + pad + top, max(0.0, r.w - 2 * pad), max(0.0, r.h - 2 * pad - top))

    sized = [(label, files, sum(f.size for _, fs in files for f in fs)) for label, files in groups]
    objects = sorted([o for o in sized if o[2] > 0], key=lambda o: -o[2])
    for (label, files, size), orect in zip(objects, squarify([o[2] for o in objects], Rect(0, 0, width, height))):
        tiles.append(Tile(orect, 0, label, f"{label}: {size:,} bytes", ""))
        sized_files = [(fl, fs, sum(f.size for f in fs)) for fl, fs in files]
        by_size = sorted([f for f in sized_files if f[2] > 0], key=lambda f: -f[2])
        for (flabel, functions, fsize), frect in zip(by_size, squarify([f[2] for f in by_size], inner(orect, True))):
            tiles.append(Tile(frect, 1, flabel, f"{flabel}: {fsize:,} bytes", ""))
            fns = sorted([f for f in functions if f.size > 0], key=lambda f: -f.size)
            for fn, rect in zip(fns, squarify([f.size for f in fns], inner(frect, True))):
                if rect.w < 0.5 or rect.h < 0.5:
                    continue
                klass = fn.prune.klass if fn.prune is not None and fn.status == "unhit" else ""
                title = f"{fn.display_name}: {fn.size:,} bytes, {fn.status}" + (f", {klass}" if klass else "")
                tiles.append(Tile(rect, 2, fn.display_name, title, fn.status, f"#{fn.anchor}", klass))
    return tiles
