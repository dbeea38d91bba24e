"""Reading and writing annotation files: QuPath GeoJSON, ASAP XML (CAMELYON16), DSA annotation JSON.

Readers turn a file into `ParsedAnnotation`s without judging them: geometry problems (wrong type,
non-numeric coordinates, self-intersections...) are found by the one validation path in
`services.import_annotations`, which names every bad polygon and imports nothing if any is bad.
Only a file that cannot be read at all (not XML, not JSON, wrong top-level shape) raises
`FormatError` here, and one over the import bounds (`services.ImportBudget`: polygons and vertices
per import, counted while the file is read) raises `ImportTooLarge`.

XML is parsed by defusedxml with DTDs forbidden: a DOCTYPE, an entity declaration (billion laughs)
or an external entity is refused whatever the file's encoding (UTF-8, UTF-16 with a BOM...).

Classes:
- QuPath: `properties.classification.name` (or a plain string), matched to a label class by key or
  name, plus QuPath's and ASAP's English words (`Tumor`, `Normal`, `Artifact`...).
- ASAP: `PartOfGroup`; "Tumor", "_0", "_1" → tumour; "Exclusion", "_2" → artefact (an exclude
  class: CAMELYON16 exclusion regions are dropped from patch labels); a group that names a label
  class → that class; any other group → non-tumour. ASAP polygons have no holes and no parts:
  export writes each part as its own polygon, and each hole as an "Exclusion" polygon (the
  CAMELYON16 convention), so holes and multipolygons do not survive an ASAP round trip.
- DSA: `label.value` (else `group`). Export writes one closed polyline per part, holes in the
  element's `holes`, and the annotation it belongs to in `user.nodescope`, so the importer joins
  the parts again: DSA and QuPath round trips are exact.
"""

from __future__ import annotations

import io
import json
import uuid
import xml.etree.ElementTree as ET  # building ASAP files for export; never for parsing input
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from math import cos, isfinite, sin

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from .geometry import InvalidAnnotation, rings_of
from .models import Annotation, LabelClass
from .services import ImportBudget, ParsedAnnotation


class FormatError(InvalidAnnotation):
    """A file that cannot be read as the format it claims to be."""

    field = "file"


# File words for our classes (casefolded). Keys and names of label classes match as well.
CLASS_WORDS = {
    "tumor": "tumour",
    "tumour": "tumour",
    "metastasis": "tumour",
    "non-tumor": "non-tumour",
    "non tumor": "non-tumour",
    "non tumour": "non-tumour",
    "normal": "non-tumour",
    "artifact": "artefact",
    "follicle": "lymphoid-follicle",
    "out of focus": "out-of-focus",
}
ASAP_GROUPS = {
    "tumor": "tumour",
    "_0": "tumour",
    "_1": "tumour",
    "exclusion": "artefact",
    "_2": "artefact",
}
ASAP_TUMOUR_GROUP = "Tumor"


def class_key_for(word: str, classes: Iterable[LabelClass]) -> str | None:
    """The label class a file's class word means, or None if it names none."""
    text = (word or "").strip().casefold()
    if not text:
        return None
    for cls in classes:
        if text in (cls.key.casefold(), cls.name.casefold()):
            return cls.key
    return CLASS_WORDS.get(text)


def _classes() -> list[LabelClass]:
    return list(LabelClass.objects.all())


def _number(text: str | None) -> float | str | None:
    """A coordinate as a float; what it was, if not a number (validation then names it)."""
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _text_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _parts(geometry: dict) -> list[list[list]]:
    """Rings of each part as lists of [x, y] (closed), from a stored geometry."""
    return [[ring.tolist() for ring in rings] for rings in rings_of(geometry)]


def _points(coordinates: object) -> int:
    """Points (lists that start with a number) anywhere in a nest of lists: a file's vertices,
    counted without building anything (iteratively: JSON nests as deep as it likes)."""
    count = 0
    stack = [coordinates]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple) and item:
            first = item[0]
            if isinstance(first, int | float) and not isinstance(first, bool):
                count += 1
            else:
                stack.extend(item)
    return count


def _load_json(data: bytes, what: str) -> object:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"not a {what} file: it is not valid JSON ({exc})") from exc


# ---- QuPath GeoJSON -----------------------------------------------------------------------------


def read_qupath(data: bytes, budget: ImportBudget | None = None) -> list[ParsedAnnotation]:
    """A QuPath GeoJSON export: FeatureCollection, a list of features, or one feature."""
    budget = budget or ImportBudget.from_settings()
    doc = _load_json(data, "QuPath GeoJSON")
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    else:
        features = doc
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise FormatError(
            "not a QuPath GeoJSON file: expected a FeatureCollection or a list of features"
        )
    classes = _classes()
    items = []
    for i, feature in enumerate(features):
        geometry = feature.get("geometry")
        budget.polygon(_points(geometry.get("coordinates") if isinstance(geometry, dict) else None))
        props = feature.get("properties")
        props = props if isinstance(props, dict) else {}
        classification = props.get("classification")
        if isinstance(classification, dict):
            word = str(classification.get("name") or "")
        else:
            word = str(classification or "")
        name = props.get("name") or (str(feature["id"]) if feature.get("id") else f"feature {i}")
        items.append(
            ParsedAnnotation(
                name=str(name),
                class_name=word,
                geometry=geometry,  # type: ignore[arg-type]
                label_class=class_key_for(word, classes),
            )
        )
    return items


def write_qupath(annotations: Sequence[Annotation]) -> bytes:
    features = []
    for a in annotations:
        cls = a.label_class
        features.append(
            {
                "type": "Feature",
                "id": str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"nodescope:annotation:{a.slide_id}:{a.pk}")
                ),
                "geometry": a.geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": a.name or f"Annotation {a.pk}",
                    "classification": {"name": cls.name, "color": list(_rgb(cls.colour))},
                    "nodescope": {"id": a.pk, "label_class": cls.key, "version": a.version},
                },
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


# ---- ASAP XML -----------------------------------------------------------------------------------


def _parse_asap(data: bytes, budget: ImportBudget) -> ET.Element:
    """The document's root, parsed by defusedxml (no DTD, no entities, any encoding), counting
    annotations and coordinates as they come so that an oversized file stops early."""
    root = None
    try:
        events = SafeET.iterparse(io.BytesIO(data), events=("start", "end"), forbid_dtd=True)
        for event, element in events:
            if root is None:
                root = element
                if root.tag != "ASAP_Annotations":
                    raise FormatError(
                        f"not an ASAP XML file: the root element is <{root.tag}>,"
                        " not <ASAP_Annotations>"
                    )
            if event == "start" and element.tag == "Annotation":
                budget.polygon()
            elif event == "end" and element.tag == "Coordinate":
                budget.add_vertices(1)
    except InvalidAnnotation:  # ImportTooLarge, or a root that is not ASAP's
        raise
    except DefusedXmlException as exc:
        raise FormatError(
            f"ASAP XML with a DOCTYPE or entity declarations is not accepted ({type(exc).__name__})"
        ) from exc
    except (ET.ParseError, ValueError) as exc:  # ValueError: an encoding expat cannot read
        raise FormatError(f"not an ASAP XML file: not well-formed XML ({exc})") from exc
    if root is None:  # pragma: no cover - expat reports an empty document as a ParseError
        raise FormatError("not an ASAP XML file: no root element")
    return root


def read_asap(data: bytes, budget: ImportBudget | None = None) -> list[ParsedAnnotation]:
    """ASAP XML as CAMELYON16 shipped it. DOCTYPEs and entity declarations are refused (no XML
    bombs, no external entities), in any encoding."""
    root = _parse_asap(data, budget or ImportBudget.from_settings())
    classes = _classes()
    items = []
    for i, element in enumerate(root.iter("Annotation")):
        group = element.get("PartOfGroup") or ""
        kind = element.get("Type") or "Polygon"
        coords = element.find("Coordinates")
        points = [] if coords is None else list(coords.iter("Coordinate"))
        ring = _asap_ring(points)
        if kind in ("Polygon", "Rectangle", "Spline"):
            geometry = {"type": "Polygon", "coordinates": [ring]}
        else:
            geometry = {"type": f"ASAP {kind}", "coordinates": [ring]}
        key = (
            ASAP_GROUPS.get(group.strip().casefold())
            or class_key_for(group, classes)
            or "non-tumour"
        )
        items.append(
            ParsedAnnotation(
                name=element.get("Name") or f"Annotation {i}",
                class_name=group,
                geometry=geometry,
                label_class=key,
            )
        )
    return items


def _asap_ring(points: list[ET.Element]) -> np.ndarray | list:
    """Vertices in `Order`: an (n, 2) float array, or lists showing the bad value if one is not a number."""
    xs = [c.get("X") for c in points]
    ys = [c.get("Y") for c in points]
    orders = [c.get("Order") for c in points]
    try:
        if None in xs or None in ys:
            raise ValueError("missing coordinate")
        ring: np.ndarray | list = np.column_stack(
            [np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64)]
        )
    except ValueError:
        ring = [[_number(x), _number(y)] for x, y in zip(xs, ys, strict=True)]
    try:
        order = np.array(orders, dtype=np.float64)
    except (TypeError, ValueError):
        return ring  # no usable Order: keep the file's sequence
    if len(order) > 1 and (np.diff(order) < 0).any():
        sequence = np.argsort(order, kind="stable")
        ring = ring[sequence] if isinstance(ring, np.ndarray) else [ring[k] for k in sequence]
    return ring.reshape(-1, 2) if isinstance(ring, np.ndarray) else ring


def _asap_group(cls: LabelClass) -> str:
    return ASAP_TUMOUR_GROUP if cls.key == "tumour" else cls.name


def write_asap(annotations: Sequence[Annotation]) -> bytes:
    root = ET.Element("ASAP_Annotations")
    container = ET.SubElement(root, "Annotations")
    groups: dict[str, str] = {}
    for a in annotations:
        cls = a.label_class
        group = _asap_group(cls)
        groups.setdefault(group, cls.colour)
        base = a.name or f"Annotation {a.pk}"
        parts = _parts(a.geometry)
        for p, rings in enumerate(parts):
            name = base if len(parts) == 1 else f"{base} part {p + 1}"
            for r, ring in enumerate(rings):
                if r == 0:
                    _asap_polygon(container, name, group, cls.colour, ring)
                else:
                    groups.setdefault("Exclusion", "#64FE2E")
                    _asap_polygon(container, f"{name} hole {r}", "Exclusion", "#64FE2E", ring)
    group_el = ET.SubElement(root, "AnnotationGroups")
    for name, colour in groups.items():
        g = ET.SubElement(group_el, "Group", Name=name, PartOfGroup="None", Color=colour.upper())
        ET.SubElement(g, "Attributes")
    ET.indent(root, space="\t")
    return (
        b'<?xml version="1.0"?>\n'
        + ET.tostring(root, encoding="utf-8", xml_declaration=False)
        + b"\n"
    )


def _asap_polygon(parent: ET.Element, name: str, group: str, colour: str, ring: list) -> None:
    element = ET.SubElement(
        parent, "Annotation", Name=name, Type="Polygon", PartOfGroup=group, Color=colour.upper()
    )
    coords = ET.SubElement(element, "Coordinates")
    for order, (x, y) in enumerate(ring[:-1]):  # ASAP rings are not closed
        ET.SubElement(coords, "Coordinate", Order=str(order), X=_text_number(x), Y=_text_number(y))


# ---- DSA annotation JSON ------------------------------------------------------------------------


def read_dsa(data: bytes, budget: ImportBudget | None = None) -> list[ParsedAnnotation]:
    """A Digital Slide Archive annotation document (or `{"annotation": ...}`, or a list of them)."""
    budget = budget or ImportBudget.from_settings()
    doc = _load_json(data, "DSA annotation")
    docs = doc if isinstance(doc, list) else [doc]
    elements: list[tuple[str, dict]] = []
    for d in docs:
        if isinstance(d, dict) and isinstance(d.get("annotation"), dict):
            d = d["annotation"]
        if not isinstance(d, dict) or not isinstance(d.get("elements"), list):
            raise FormatError(
                'not a DSA annotation file: expected {"name": ..., "elements": [...]}'
            )
        elements += [(str(d.get("name") or ""), e) for e in d["elements"]]
    classes = _classes()
    items: list[ParsedAnnotation] = []
    joined: dict[object, ParsedAnnotation] = {}
    for i, (doc_name, element) in enumerate(elements):
        if not isinstance(element, dict):
            raise FormatError(f"DSA element {i} is not an object")
        shape = element.get("type")
        budget.polygon(
            4 if shape == "rectangle" else _points([element.get("points"), element.get("holes")])
        )
        label = element.get("label")
        word = str(
            (label.get("value") if isinstance(label, dict) else label) or element.get("group") or ""
        )
        ours = (
            (element.get("user") or {}).get("nodescope")
            if isinstance(element.get("user"), dict)
            else None
        )
        ours = ours if isinstance(ours, dict) else {}
        name = str(ours.get("name") or element.get("id") or f"{doc_name or 'element'} {i}")
        polygon = _dsa_polygon(element)
        if isinstance(polygon, str):  # a rectangle that cannot be drawn: validation names it
            geometry = {"type": f"DSA rectangle ({polygon})", "coordinates": []}
            items.append(
                ParsedAnnotation(
                    name=name,
                    class_name=word,
                    geometry=geometry,
                    label_class=class_key_for(word, classes),
                )
            )
            continue
        key = ours.get("annotation")
        key = key if isinstance(key, str | int) else None
        if key is not None and key in joined and polygon is not None:
            target = joined[key]
            geometry = target.geometry
            if geometry["type"] == "Polygon":
                geometry["type"], geometry["coordinates"] = (
                    "MultiPolygon",
                    [geometry["coordinates"]],
                )
            geometry["coordinates"].append(polygon)
            continue
        if polygon is None:
            kind = element.get("type")
            closed = " (not closed)" if kind == "polyline" else ""
            geometry = {"type": f"DSA {kind}{closed}", "coordinates": []}
        else:
            geometry = {"type": "Polygon", "coordinates": polygon}
        item = ParsedAnnotation(
            name=name, class_name=word, geometry=geometry, label_class=class_key_for(word, classes)
        )
        if key is not None and polygon is not None:
            joined[key] = item
        items.append(item)
    return items


def _dsa_points(points: object) -> list:
    if not isinstance(points, list):
        return [points]
    return [[p[0], p[1]] if isinstance(p, list | tuple) and len(p) in (2, 3) else p for p in points]


def _dsa_polygon(element: dict) -> list | str | None:
    """Rings of a closed polyline or a rectangle element; None for any other element; for a
    rectangle with a NaN or infinite centre, size or rotation, what is wrong with it."""
    kind = element.get("type")
    if kind == "polyline" and element.get("closed"):
        rings = [_dsa_points(element.get("points"))]
        holes = element.get("holes") or []
        rings += [_dsa_points(h) for h in (holes if isinstance(holes, list) else [holes])]
        return rings
    if kind == "rectangle":
        try:
            cx, cy = float(element["center"][0]), float(element["center"][1])
            w, h = float(element["width"]) / 2, float(element["height"]) / 2
            angle = float(element.get("rotation") or 0)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            return [[element.get("center"), element.get("width"), element.get("height")]]
        numbers = {"center x": cx, "center y": cy, "width": w, "height": h, "rotation": angle}
        bad = [f"{k} {v!r}" for k, v in numbers.items() if not isfinite(v)]
        if bad:
            return f"{', '.join(bad)}: not a finite number"
        c, s = cos(angle), sin(angle)
        corners = [(-w, -h), (w, -h), (w, h), (-w, h)]
        return [
            [[_plain(cx + dx * c - dy * s), _plain(cy + dx * s + dy * c)] for dx, dy in corners]
        ]
    return None


def write_dsa(annotations: Sequence[Annotation], *, name: str = "NodeScope annotations") -> bytes:
    elements = []
    for a in annotations:
        cls = a.label_class
        r, g, b = _rgb(cls.colour)
        for p, rings in enumerate(_parts(a.geometry)):
            element = {
                "type": "polyline",
                "closed": True,
                "points": [[x, y, 0] for x, y in rings[0][:-1]],
                "label": {"value": cls.name},
                "group": cls.name,
                "lineColor": f"rgb({r},{g},{b})",
                "fillColor": f"rgba({r},{g},{b},0.25)",
                "lineWidth": 2,
                "user": {
                    "nodescope": {
                        "annotation": a.pk,
                        "part": p,
                        "name": a.name or f"Annotation {a.pk}",
                        "label_class": cls.key,
                        "version": a.version,
                    }
                },
            }
            if len(rings) > 1:
                element["holes"] = [[[x, y, 0] for x, y in ring[:-1]] for ring in rings[1:]]
            elements.append(element)
    return json.dumps(
        {"name": name, "description": "Exported from NodeScope", "elements": elements}
    ).encode()


# ---- registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    read: Callable[[bytes], list[ParsedAnnotation]]
    write: Callable[[Sequence[Annotation]], bytes]
    content_type: str
    suffix: str


FORMATS = {
    "qupath": Format("qupath", read_qupath, write_qupath, "application/geo+json", ".geojson"),
    "asap": Format("asap", read_asap, write_asap, "application/xml", ".xml"),
    "dsa": Format("dsa", read_dsa, write_dsa, "application/json", ".json"),
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name.strip().lower()]
    except KeyError:
        raise FormatError(f"unknown format {name!r}; use one of {', '.join(FORMATS)}") from None


def detect_format(file_name: str, data: bytes) -> Format:
    """Guess the format from the name and the first bytes: XML → ASAP, features → QuPath, elements → DSA."""
    lower = file_name.lower()
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n")
    if lower.endswith(".xml") or head.startswith(b"<"):
        return FORMATS["asap"]
    if lower.endswith(".geojson") or b'"Feature' in head or b'"features"' in head:
        return FORMATS["qupath"]
    if b'"elements"' in head or b'"annotation"' in head:
        return FORMATS["dsa"]
    raise FormatError(f"cannot tell the format of {file_name!r}; give one of {', '.join(FORMATS)}")
