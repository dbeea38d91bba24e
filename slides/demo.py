"""Demo data: a lab, three users (one per role), generated lymph-node cases, the real CMU-1 slide,
and one CT and one ultrasound case of generated node images (`inference.synthetic_images`).

Generated slides are marked `synthetic` everywhere they appear; they are never presented as real
tissue. Running it twice reuses what is there (users, cases and already registered slide files).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from .access import grant_role
from .ingest import ImportReport, import_manifest
from .models import Lab, Role

SHARED_DATA = Path(settings.BASE_DIR).parent / "shared" / "data"

DEMO_USERS = (
    ("pathologist", "pathologist-demo-2026", Role.PATHOLOGIST),
    ("lablead", "lablead-demo-2026", Role.LAB_LEAD),
    ("admin", "admin-demo-2026", Role.ADMIN),
)

# (case, node, tumour?, seed): positive and negative nodes, follicles everywhere.
DEMO_NODES = (
    ("DEMO-26-001", "level II, node 1", True, 11),
    ("DEMO-26-001", "level II, node 2", False, 12),
    ("DEMO-26-001", "level III, node 1", False, 13),
    ("DEMO-26-002", "level IIa, node 1", True, 21),
    ("DEMO-26-002", "level IV, node 1", False, 22),
)


@dataclass
class DemoResult:
    users: list[tuple[str, str, str]]
    report: ImportReport
    lab: Lab


def ensure_users(lab: Lab) -> list[tuple[str, str, str]]:
    """Create the demo users once; existing users keep their passwords."""
    User = get_user_model()
    created = []
    for username, password, role in DEMO_USERS:
        user, made = User.objects.get_or_create(username=username)
        if made:
            user.set_password(password)
            user.is_staff = role == Role.ADMIN
            user.is_superuser = role == Role.ADMIN
            user.save()
        grant_role(user, role)
        lab.members.add(user)
        created.append((username, password, str(role.label)))
    return created


def load_demo(*, size: int = 6000, progress: Callable[[str], None] = print) -> DemoResult:
    """Generate (once) and import the demo cases; returns the logins and the import report."""
    from .synthetic import generate_slide

    lab, _ = Lab.objects.get_or_create(code="demo", defaults={"name": "Demo Head and Neck Lab"})
    users = ensure_users(lab)
    folder = Path(settings.VAR_DIR) / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, node, tumour, seed in DEMO_NODES:
        name = f"{case}_{node.replace(',', '').replace(' ', '-')}.tiff"
        path = folder / name
        if not path.exists():
            progress(f"generating synthetic slide {name} ({size} x {size} px)")
            generate_slide(path, width=size, height=size, mpp=0.5, seed=seed, tumour=tumour)
        rows.append(
            {
                "case": case,
                "node": node,
                "file": name,
                "status": "positive" if tumour else "negative",
            }
        )
    manifest = folder / "manifest.csv"
    _write_manifest(manifest, rows)
    report = import_manifest(manifest=manifest, lab=lab, create_missing=True, synthetic=True)

    cmu = SHARED_DATA / "cmu-1-small-region"
    if cmu.exists():
        real_rows = [
            {
                "case": "CMU-1 (real H&E, skin)",
                "node": "SVS",
                "file": str(cmu / "CMU-1-Small-Region.svs"),
                "status": "",
            },
            {
                "case": "CMU-1 (real H&E, skin)",
                "node": "pyramidal TIFF",
                "file": str(cmu / "CMU-1-Small-Region.pyramid.tiff"),
                "status": "",
            },
            {
                "case": "CMU-1 (real H&E, skin)",
                "node": "DICOM",
                "file": str(cmu / "dicom"),
                "status": "",
            },
        ]
        real_manifest = folder / "manifest-real.csv"
        _write_manifest(real_manifest, real_rows)
        real = import_manifest(manifest=real_manifest, lab=lab, create_missing=True)
        report.imported += real.imported
        report.failed += real.failed
    else:
        progress("../shared/data is not here: the demo has generated slides only")
    images = load_demo_node_images(lab=lab, folder=folder / "node-images", progress=progress)
    report.imported += images.imported
    report.failed += images.failed
    return DemoResult(users=users, report=report, lab=lab)


# (case, modality, patient): one case per modality, four generated node images each.
DEMO_IMAGE_CASES = (
    ("DEMO-26-CT1", "ct", "PX-DEMO-CT1"),
    ("DEMO-26-US1", "ultrasound", "PX-DEMO-US1"),
)


def load_demo_node_images(
    *, lab: Lab, folder: Path, progress: Callable[[str], None] = print, per_case: int = 4
) -> ImportReport:
    """Generate (once) and import one CT case (DICOM, HU) and one ultrasound case (PNG), each
    with `per_case` node images, metastatic and benign mixed; all marked synthetic."""
    from inference.synthetic_images import write_node_image_set

    report = ImportReport()
    for case, modality, patient in DEMO_IMAGE_CASES:
        sub = folder / modality
        manifest = sub / "demo-manifest.csv"
        if not manifest.exists():
            progress(f"generating {per_case} synthetic {modality} node images for {case}")
            # Two generated patients (one metastatic, one benign), their images pooled in one case.
            generated = write_node_image_set(
                sub, modality=modality, n_patients=2, images_per_patient=per_case // 2, seed=7
            )
            with open(generated, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            for i, row in enumerate(rows, start=1):
                row.update(case=case, node=f"node {i}", patient=patient)
            _write_manifest(manifest, rows, extra=("patient", "modality"))
        part = import_manifest(manifest=manifest, lab=lab, create_missing=True, synthetic=True)
        report.imported += part.imported
        report.failed += part.failed
    return report


def _write_manifest(path: Path, rows: list[dict[str, str]], *, extra: tuple[str, ...] = ()) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "node", "file", "status", *extra])
        writer.writeheader()
        writer.writerows(rows)
