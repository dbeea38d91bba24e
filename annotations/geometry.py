"""Checking annotation geometry: GeoJSON Polygon/MultiPolygon in level-0 pixels of a slide.

`validate_geometry` refuses, with a message naming the problem, anything that is not a clean area
inside the slide: wrong GeoJSON type, non-numeric or NaN/infinite coordinates, rings with fewer
than 3 distinct vertices, zero area, self-intersections and other invalid rings (shapely's
`explain_validity`), coordinates outside 0..width × 0..height, or more than `MAX_VERTICES`.
Nothing is silently repaired. The one normalisation is notation, not repair: an unclosed ring
(as ASAP and DSA write them) is closed by repeating its first vertex.

`repair_geometry` exists for imports that ask for it explicitly (`repair="make_valid"`): it runs
shapely's `make_valid(method="structure")`, which keeps the union of what the outline encloses
(a freehand loop that crosses itself keeps both lobes, unlike `buffer(0)`, which can drop one).

Vertex counts never include the closing repeat of a ring's first vertex.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

MAX_VERTICES = 200_000
GEOMETRY_TYPES = ("Polygon", "MultiPolygon")
REPAIR_METHODS = ("make_valid",)

Rings = list[np.ndarray]  # closed rings of one polygon, each (n + 1, 2) float64; exterior first


class InvalidAnnotation(ValueError):
    """An annotation refused as it stands; the message names the problem."""

    field = "geometry"


class DegenerateGeometry(InvalidAnnotation):
    """A ring that encloses nothing (fewer than 3 distinct vertices, or all on one line)."""


class UnknownLabelClass(InvalidAnnotation):
    """A label class that does not exist."""

    field = "label_class"


@dataclass(frozen=True)
class CheckedGeometry:
    """A validated geometry, normalised to closed rings, with what the row stores about it."""

    geojson: dict
    shape: BaseGeometry
    bounds: tuple[float, float, float, float]
    vertex_count: int
    area: float


def validate_geometry(
    geometry: object, *, width: float, height: float, max_vertices: int = MAX_VERTICES
) -> CheckedGeometry:
    """Check `geometry` against a slide of `width` × `height` level-0 px; raise `InvalidAnnotation`."""
    polygons = parse_polygons(geometry, max_vertices=max_vertices)
    _check_inside(polygons, width=width, height=height)
    _check_area(polygons)
    shape = _shape(polygons)
    if not shape.is_valid:
        raise InvalidAnnotation(f"geometry is not valid: {_describe_invalidity(shape)}")
    if shape.area == 0:
        raise InvalidAnnotation("geometry has zero area")
    return _checked(polygons, shape)


def repair_geometry(
    geometry: object, *, width: float, height: float, max_vertices: int = MAX_VERTICES
) -> tuple[CheckedGeometry, bool]:
    """Validate, or if only invalid (self-intersecting etc.) repair with `make_valid`.

    Returns the checked geometry and whether it was repaired. Structural problems (wrong type,
    bad numbers, fewer than 3 distinct vertices, outside the slide, too many vertices) are still
    refused: there is nothing sensible to repair them into.
    """
    polygons = parse_polygons(geometry, max_vertices=max_vertices)
    _check_inside(polygons, width=width, height=height)
    _check_area(polygons)
    shape = _shape(polygons)
    if shape.is_valid and shape.area > 0:
        return _checked(polygons, shape), False
    fixed = shapely.make_valid(shape, method="structure", keep_collapsed=False)
    parts = [
        g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon" and not g.is_empty
    ]
    if not parts or sum(p.area for p in parts) == 0:
        raise InvalidAnnotation(
            f"geometry has zero area once repaired ({_describe_invalidity(shape)})"
        )
    repaired = shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]
    if not repaired.is_valid:
        # make_valid can return parts that share an edge (GEOS 3.14); their union is the same area.
        repaired = shapely.union_all(parts)
    return validate_geometry(
        to_geojson(repaired), width=width, height=height, max_vertices=max_vertices
    ), True


def parse_polygons(geometry: object, *, max_vertices: int = MAX_VERTICES) -> list[Rings]:
    """GeoJSON Polygon/MultiPolygon → list of polygons, each a list of closed (n, 2) rings."""
    if not isinstance(geometry, Mapping):
        raise InvalidAnnotation(
            f"geometry must be a GeoJSON object with type Polygon or MultiPolygon, got {type(geometry).__name__}"
        )
    kind = geometry.get("type")
    if kind not in GEOMETRY_TYPES:
        raise InvalidAnnotation(f"geometry type must be Polygon or MultiPolygon, got {kind!r}")
    coords = geometry.get("coordinates")
    if not isinstance(coords, list | tuple) or not coords:
        raise InvalidAnnotation(f"{kind} needs a non-empty list of coordinates")
    raw_polygons = [coords] if kind == "Polygon" else list(coords)
    listed = 0
    for p, rings in enumerate(raw_polygons):
        where = "" if kind == "Polygon" else f"polygon {p}: "
        if not isinstance(rings, list | tuple) or not rings:
            raise InvalidAnnotation(f"{where}a polygon must be a non-empty list of rings")
        for r, ring in enumerate(rings):
            if not isinstance(ring, list | tuple | np.ndarray):
                raise InvalidAnnotation(f"{where}ring {r} must be a list of [x, y] positions")
            listed += len(ring)
    if listed > max_vertices:
        raise InvalidAnnotation(
            f"geometry has {listed:,} vertices; at most {max_vertices:,} are allowed"
        )
    polygons: list[Rings] = []
    for p, rings in enumerate(raw_polygons):
        where = "" if kind == "Polygon" else f"polygon {p}: "
        polygons.append([_ring(ring, where=f"{where}ring {r}") for r, ring in enumerate(rings)])
    return polygons


def _ring(ring: list | tuple | np.ndarray, *, where: str) -> np.ndarray:
    try:
        arr = np.asarray(ring)
    except ValueError:
        arr = np.asarray([], dtype=object)
    bad_type = arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[1] not in (2, 3)
    if bad_type or (not isinstance(ring, np.ndarray) and _has_bool(ring)):
        raise InvalidAnnotation(f"{where}: {_first_bad_position(ring)}")
    arr = arr[:, :2].astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite.all(axis=1)))
        raise InvalidAnnotation(f"{where}: vertex {i} has a NaN or infinite coordinate {ring[i]!r}")
    if len(arr) and (arr[0] != arr[-1]).any():
        arr = np.vstack([arr, arr[:1]])
    if _distinct_at_least_3(arr[:-1]) is False:
        raise DegenerateGeometry(f"{where}: fewer than 3 distinct vertices")
    return arr


def _has_bool(ring: list | tuple) -> bool:
    """numpy reads true/false as 1/0; JSON booleans are not coordinates."""
    return any(type(v) is bool for pos in ring for v in pos)


def _first_bad_position(ring: list | tuple) -> str:
    for i, pos in enumerate(ring):
        if not isinstance(pos, list | tuple) or len(pos) not in (2, 3):
            return f"vertex {i} must be an [x, y] pair, got {pos!r}"
        for value in pos:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"vertex {i} has a non-numeric coordinate {value!r}"
    return "must be a list of [x, y] positions"


def _distinct_at_least_3(points: np.ndarray) -> bool:
    if len(points) < 3:
        return False
    differs_0 = (points != points[0]).any(axis=1)
    if not differs_0.any():
        return False
    second = points[int(np.argmax(differs_0))]
    return bool((differs_0 & (points != second).any(axis=1)).any())


def _check_inside(polygons: list[Rings], *, width: float, height: float) -> None:
    for p, rings in enumerate(polygons):
        for ring in rings:
            outside = (
                (ring[:, 0] < 0) | (ring[:, 0] > width) | (ring[:, 1] < 0) | (ring[:, 1] > height)
            )
            if outside.any():
                x, y = ring[int(np.argmax(outside))]
                part = f"polygon {p} " if len(polygons) > 1 else ""
                raise InvalidAnnotation(
                    f"{part}vertex ({_num(x)}, {_num(y)}) lies outside the slide "
                    f"(0..{_num(width)} × 0..{_num(height)} px)"
                )


def _shape(polygons: list[Rings]) -> BaseGeometry:
    parts = [shapely.Polygon(rings[0], rings[1:]) for rings in polygons]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _check_area(polygons: list[Rings]) -> None:
    """Refuse rings whose vertices all lie on one line (no interior at all)."""
    for p, rings in enumerate(polygons):
        for r, ring in enumerate(rings):
            if _collinear(ring):
                part = f"polygon {p} " if len(polygons) > 1 else ""
                what = "outer ring" if r == 0 else f"hole {r}"
                raise DegenerateGeometry(f"{part}{what} has zero area")


def _collinear(ring: np.ndarray) -> bool:
    d = ring - ring[0]
    k = int(np.argmax((d != 0).any(axis=1)))
    return bool((d[:, 0] * d[k, 1] - d[:, 1] * d[k, 0] == 0).all())


_VALIDITY = re.compile(r"^(?P<what>.*?)\s*\[(?P<x>\S+) (?P<y>\S+)\]$")


def _describe_invalidity(shape: BaseGeometry) -> str:
    """shapely's reason, e.g. 'Ring Self-intersection[71272 127775]' → 'ring self-intersection at (71272, 127775)'."""
    reason = explain_validity(shape)
    match = _VALIDITY.match(reason)
    if not match:
        return reason.lower()
    x, y = float(match["x"]), float(match["y"])
    return f"{match['what'].lower()} at ({_num(x)}, {_num(y)})"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _checked(polygons: list[Rings], shape: BaseGeometry) -> CheckedGeometry:
    geojson = _geojson_from_rings(polygons)
    min_x, min_y, max_x, max_y = shape.bounds
    vertices = sum(len(ring) - 1 for rings in polygons for ring in rings)
    return CheckedGeometry(
        geojson=geojson,
        shape=shape,
        bounds=(min_x, min_y, max_x, max_y),
        vertex_count=vertices,
        area=shape.area,
    )


def _coords(ring: np.ndarray) -> list:
    """Ring as JSON lists: integers where every coordinate is integral (smaller, exact)."""
    if ring.size and np.all(ring == np.floor(ring)) and np.abs(ring).max() < 2**53:
        return ring.astype(np.int64).tolist()
    return ring.tolist()


def _geojson_from_rings(polygons: list[Rings]) -> dict:
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": [_coords(r) for r in polygons[0]]}
    return {
        "type": "MultiPolygon",
        "coordinates": [[_coords(r) for r in rings] for rings in polygons],
    }


def to_geojson(shape: BaseGeometry) -> dict:
    """A shapely Polygon/MultiPolygon as a GeoJSON dict (lists, closed rings)."""
    parts = list(shape.geoms) if shape.geom_type == "MultiPolygon" else [shape]
    polygons = [
        [np.asarray(p.exterior.coords)[:, :2], *(np.asarray(h.coords)[:, :2] for h in p.interiors)]
        for p in parts
    ]
    return _geojson_from_rings(polygons)


def plain(geometry: object) -> object:
    """A geometry with numpy coordinate arrays (as readers may produce) turned into JSON lists."""
    if isinstance(geometry, np.ndarray):
        return (
            _coords(geometry)
            if geometry.dtype.kind == "f" and geometry.ndim == 2
            else geometry.tolist()
        )
    if isinstance(geometry, Mapping):
        return {k: plain(v) for k, v in geometry.items()}
    if isinstance(geometry, list | tuple):
        return [plain(v) for v in geometry]
    return geometry


def rings_of(geojson: Mapping) -> list[Rings]:
    """Closed rings of a stored (already valid) geometry, without re-validating it."""
    coords = geojson["coordinates"]
    polygons = [coords] if geojson["type"] == "Polygon" else coords
    return [[np.asarray(ring, dtype=np.float64)[:, :2] for ring in rings] for rings in polygons]


def vertex_count(geojson: Mapping) -> int:
    """Vertices of a geometry, not counting a ring's closing repeat of its first vertex."""
    total = 0
    for rings in rings_of(geojson):
        for ring in rings:
            closed = len(ring) > 1 and bool((ring[0] == ring[-1]).all())
            total += len(ring) - (1 if closed else 0)
    return total


def simplify_for_view(geometries: Sequence[Mapping], *, tolerance: float) -> list[dict | None]:
    """Outlines simplified for drawing a zoomed-out view, `tolerance` level-0 px (about one
    screen pixel there): entry i is the simplified GeoJSON of `geometries[i]`, or None where the
    stored outline is to be sent as it is.

    Douglas-Peucker (shapely, vectorised over all rows; its vertices are a subset of the stored
    ones) wherever its result is a valid outline with area, and shapely's topology-preserving
    simplification (which never lets a ring cross itself or another, nor drops one) for the few
    it would break: both stay within `tolerance` of the stored outline, and the plain one is
    about 10x faster on the CAMELYON16 outlines, so nearly all rows take the fast path. None
    where neither would drop a vertex, or both would be invalid or empty: the original goes out,
    never a broken outline. An outline smaller than the tolerance keeps at least a triangle (the
    topology-preserving pass), so nothing vanishes from view.
    """
    if not geometries:
        return []
    shapes = np.array([_shape(rings_of(g)) for g in geometries], dtype=object)
    simple = shapely.simplify(shapes, tolerance, preserve_topology=False)
    broken = ~_drawable(simple)
    if broken.any():
        simple[broken] = shapely.simplify(shapes[broken], tolerance, preserve_topology=True)
    keep = shapely.get_num_coordinates(simple) < shapely.get_num_coordinates(shapes)
    keep[keep] &= _drawable(simple[keep])
    return [to_geojson(s) if k else None for s, k in zip(simple, keep, strict=True)]


def _drawable(shapes: np.ndarray) -> np.ndarray:
    """Valid Polygon/MultiPolygon outlines with area (what a simplification may send)."""
    ok = ~shapely.is_empty(shapes) & (shapely.area(shapes) > 0)
    ok &= np.isin(shapely.get_type_id(shapes), (3, 6))  # Polygon, MultiPolygon
    ok[ok] &= shapely.is_valid(shapes[ok])
    return ok
