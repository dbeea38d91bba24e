"""Reader-study workflows: setting a study up, opening and closing it, readers' answers, the
model's answers, and the comparison of every reader and the model on the same images.

Who may do what (views call these checks):
- *managers* of a study are lab leads and admins of its lab (superusers: every lab). Lab leads
  already run their lab's triage and metrics, so they organise its reader studies too; requiring
  the admin role would leave most labs unable to run one.
- *readers* are the lab's users chosen for the study; they reach only their own reading state.
- A manager who is also a reader of the study sees no answers or results until it closes.
- Anybody else gets 404, as for other labs' cases.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from audit.log import record
from slides.access import has_role, roles_of, slides_for
from slides.models import Lab, Node, Role, Slide

from . import statistics
from .models import (
    Label,
    ModelAnswer,
    ReaderAnswer,
    ReaderStudy,
    StudyImage,
    StudyReader,
    StudyStateError,
)

MAX_IMAGES = 5000
MAX_READERS = 200


class StudyInputError(ValueError):
    """Bad input for a study: `errors` maps each field to what is wrong (answered 400)."""

    def __init__(self, errors: dict[str, Any]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


# ---- who sees what ------------------------------------------------------------------------------


def managed_labs(user) -> QuerySet[Lab]:
    """Labs whose studies the user manages: their labs if they are a lab lead or admin."""
    if not user.is_authenticated or not has_role(user, Role.LAB_LEAD):
        return Lab.objects.none()
    return Lab.objects.all() if user.is_superuser else Lab.objects.filter(members=user)


def visible_studies(user) -> QuerySet[ReaderStudy]:
    """Studies the user manages or reads."""
    if not user.is_authenticated or not roles_of(user):
        return ReaderStudy.objects.none()
    return ReaderStudy.objects.filter(
        Q(lab__in=managed_labs(user)) | Q(readers__user=user)
    ).distinct()


def can_manage(user, study: ReaderStudy) -> bool:
    return managed_labs(user).filter(pk=study.lab_id).exists()


def is_reader(user, study: ReaderStudy) -> bool:
    return user.is_authenticated and study.readers.filter(user=user).exists()


def can_see_answers(user, study: ReaderStudy) -> bool:
    """Managers see answers and results, except a manager who reads the study while it is open."""
    if not can_manage(user, study):
        return False
    return study.status == ReaderStudy.Status.CLOSED or not is_reader(user, study)


# ---- setting up ---------------------------------------------------------------------------------


def _whole_number(value: Any) -> int | None:
    """An int (not a bool) or a string of digits, as an int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _text(value: Any, *, required: bool, limit: int) -> bool:
    """True if `value` is acceptable text (no NUL characters, within `limit`)."""
    if not isinstance(value, str) or "\x00" in value or len(value) > limit:
        return False
    return bool(value.strip()) or not required


def _id_list(value: Any, field: str, errors: dict) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**63 for v in value
    ):
        errors[field] = "must be a list of ids"
        return None
    if len(set(value)) != len(value):
        errors[field] = "lists an id twice"
        return None
    return value


def _check_images(user, lab: Lab, ids: list[int], errors: dict) -> list[Slide]:
    if len(ids) > MAX_IMAGES:
        errors["images"] = f"at most {MAX_IMAGES} images"
        return []
    found = {s.pk: s for s in slides_for(user).filter(pk__in=ids, node__case__lab=lab)}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        errors["images"] = f"no image {missing[:20]} in lab {lab.code}"
    return [found[pk] for pk in ids if pk in found]


def possible_readers(lab: Lab):
    """Who may read the lab's studies: active members of the lab, and external readers (active
    users of no lab, e.g. radiologists invited for a study). External readers see nothing of the
    lab but the study's images through the study's own routes, so their reading is fully blind.
    (Callers keep those with a role.)"""
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(labs=lab) | Q(labs__isnull=True))
        .distinct()
        .order_by("username")
    )


def _check_readers(lab: Lab, ids: list[int], errors: dict) -> list:
    if len(ids) > MAX_READERS:
        errors["readers"] = f"at most {MAX_READERS} readers"
        return []
    users = {u.pk: u for u in possible_readers(lab).filter(pk__in=ids)}
    bad = [pk for pk in ids if pk not in users or not roles_of(users[pk])]
    if bad:
        errors["readers"] = (
            f"user {bad[:20]} is neither an active member of lab {lab.code} with a role nor an"
            " external reader (an active user with a role and no lab)"
        )
    return [users[pk] for pk in ids if pk in users]


def _check_model(data: dict, errors: dict):
    from inference.records import ModelVersion

    if "model_version" not in data or data["model_version"] in (None, ""):
        return None
    pk = data["model_version"]
    if not isinstance(pk, int) or isinstance(pk, bool) or not 0 < pk < 2**63:
        errors["model_version"] = "must be a model version id or null"
        return None
    version = ModelVersion.objects.filter(pk=pk).first()
    if version is None:
        errors["model_version"] = f"no model version {pk}"
    return version


def _check_threshold(value: Any, errors: dict) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        errors["threshold"] = "must be a number between 0 and 1"
        return None
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        errors["threshold"] = "must be a number between 0 and 1"
        return None
    return number


FIELDS = {"name", "lab", "instructions", "images", "readers", "model_version", "threshold"}


def create_study(*, user, data: dict) -> ReaderStudy:
    """A draft study from `data` (name, lab id, instructions, images: slide ids, readers: user ids,
    model_version id or null, threshold or null); all or nothing."""
    errors: dict[str, Any] = {}
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise StudyInputError({k: "unknown field" for k in unknown})
    name = data.get("name")
    if not _text(name, required=True, limit=200):
        errors["name"] = "required text, at most 200 characters"
    lab_id = data.get("lab")
    lab = None
    if not isinstance(lab_id, int) or isinstance(lab_id, bool) or not 0 < lab_id < 2**63:
        errors["lab"] = "required: the id of one of your labs"
    else:
        lab = managed_labs(user).filter(pk=lab_id).first()
        if lab is None:
            errors["lab"] = f"no lab {lab_id} among the labs you lead"
    instructions = data.get("instructions", "")
    if not _text(instructions, required=False, limit=10000):
        errors["instructions"] = "must be text, at most 10,000 characters"
    image_ids = _id_list(data.get("images", []), "images", errors) or []
    reader_ids = _id_list(data.get("readers", []), "readers", errors) or []
    version = _check_model(data, errors)
    threshold = _check_threshold(data.get("threshold"), errors)
    slides = _check_images(user, lab, image_ids, errors) if lab else []
    readers = _check_readers(lab, reader_ids, errors) if lab else []
    if errors:
        raise StudyInputError(errors)
    with transaction.atomic():
        study = ReaderStudy.objects.create(
            name=name.strip(),
            lab=lab,
            instructions=instructions,
            created_by=user,
            model_version=version,
            threshold=threshold,
            model_status=ReaderStudy.ModelStatus.NONE
            if version is None
            else ReaderStudy.ModelStatus.PENDING,
        )
        StudyImage.objects.bulk_create([StudyImage(study=study, slide=s) for s in slides])
        StudyReader.objects.bulk_create([StudyReader(study=study, user=u) for u in readers])
        record(
            actor=user,
            action="reader study created",
            obj=study,
            images=len(slides),
            readers=[u.username for u in readers],
            model_version=version.pk if version else None,
        )
    return study


def update_study(*, study: ReaderStudy, user, data: dict) -> ReaderStudy:
    """Change a draft study (any of the create fields but `lab`); all or nothing."""
    errors: dict[str, Any] = {}
    unknown = sorted(set(data) - (FIELDS - {"lab"}))
    if unknown:
        raise StudyInputError(
            {k: "unknown field" if k != "lab" else "cannot change" for k in unknown}
        )
    if study.status != ReaderStudy.Status.DRAFT:
        raise StudyStateError(f"the study is {study.status}; only a draft can be changed")
    if "name" in data and not _text(data["name"], required=True, limit=200):
        errors["name"] = "required text, at most 200 characters"
    if "instructions" in data and not _text(data["instructions"], required=False, limit=10000):
        errors["instructions"] = "must be text, at most 10,000 characters"
    image_ids = _id_list(data.get("images"), "images", errors)
    reader_ids = _id_list(data.get("readers"), "readers", errors)
    version = _check_model(data, errors)
    threshold = _check_threshold(data.get("threshold"), errors)
    slides = _check_images(user, study.lab, image_ids, errors) if image_ids is not None else None
    readers = _check_readers(study.lab, reader_ids, errors) if reader_ids is not None else None
    if errors:
        raise StudyInputError(errors)
    with transaction.atomic():
        locked = ReaderStudy.objects.select_for_update().get(pk=study.pk)
        if locked.status != ReaderStudy.Status.DRAFT:
            raise StudyStateError(f"the study is {locked.status}; only a draft can be changed")
        if "name" in data:
            locked.name = data["name"].strip()
        if "instructions" in data:
            locked.instructions = data["instructions"]
        if "model_version" in data:
            locked.model_version = version
            locked.model_status = (
                ReaderStudy.ModelStatus.NONE if version is None else ReaderStudy.ModelStatus.PENDING
            )
        if "threshold" in data:
            locked.threshold = threshold
        locked.save()
        if slides is not None:
            locked.images.exclude(slide__in=slides).delete()
            have = set(locked.images.values_list("slide_id", flat=True))
            StudyImage.objects.bulk_create(
                [StudyImage(study=locked, slide=s) for s in slides if s.pk not in have]
            )
        if readers is not None:
            locked.readers.exclude(user__in=readers).delete()
            have = set(locked.readers.values_list("user_id", flat=True))
            StudyReader.objects.bulk_create(
                [StudyReader(study=locked, user=u) for u in readers if u.pk not in have]
            )
        record(actor=user, action="reader study changed", obj=locked, fields=sorted(data))
    return locked


def open_study(*, study: ReaderStudy, user) -> ReaderStudy:
    with transaction.atomic():
        locked = ReaderStudy.objects.select_for_update().get(pk=study.pk)
        locked.open()
        record(actor=user, action="reader study opened", obj=locked)
    return locked


def close_study(*, study: ReaderStudy, user, compute_model: bool = True) -> ReaderStudy:
    """Close the study; with a model version, its answers are computed on the `gpu` queue once
    the transaction commits (see :func:`queue_model_answers`)."""
    from config.queueing import check_queue_reachable

    if compute_model and study.model_version_id is not None:
        check_queue_reachable()
    with transaction.atomic():
        locked = ReaderStudy.objects.select_for_update().get(pk=study.pk)
        locked.close()
        record(actor=user, action="reader study closed", obj=locked)
        if compute_model and locked.model_version_id is not None:
            pk = locked.pk
            transaction.on_commit(lambda: queue_model_answers(pk))
    return locked


# ---- the model's answers ---------------------------------------------------------------------------


def queue_model_answers(study_id: int) -> None:
    """Mark the study's model answers queued and send the task (failed with the reason if the
    broker refuses it)."""
    from config.queueing import QueueUnavailable, send

    from .tasks import compute_model_answers_task

    ReaderStudy.objects.filter(
        pk=study_id,
        model_status__in=[ReaderStudy.ModelStatus.PENDING, ReaderStudy.ModelStatus.FAILED],
    ).update(model_status=ReaderStudy.ModelStatus.QUEUED, model_status_reason="")
    try:
        send(
            compute_model_answers_task,
            [study_id],
            queue=settings.TRAINING_QUEUE,
            what=f"the model's answers of reader study {study_id}",
        )
    except QueueUnavailable as exc:
        ReaderStudy.objects.filter(pk=study_id).update(
            model_status=ReaderStudy.ModelStatus.FAILED, model_status_reason=str(exc)[:5000]
        )


def store_model_answers(*, study: ReaderStudy, probabilities: dict[int, float]) -> int:
    """Store the model's probability of metastatic per slide id (and its label at the study's
    threshold) for every image of the study; replaces earlier ones. Returns the count stored."""
    threshold = study.operating_threshold
    if study.model_version_id is None or threshold is None:
        raise StudyStateError("the study has no model version with a threshold")
    images = list(study.images.all())
    missing = [i.slide_id for i in images if i.slide_id not in probabilities]
    if missing:
        raise StudyInputError({"probabilities": f"no probability for slide {missing[:20]}"})
    with transaction.atomic():
        ModelAnswer.objects.filter(study=study).delete()
        ModelAnswer.objects.bulk_create(
            [
                ModelAnswer(
                    study=study,
                    image=image,
                    model_version_id=study.model_version_id,
                    probability=float(probabilities[image.slide_id]),
                    threshold=threshold,
                    label=Label.METASTATIC
                    if float(probabilities[image.slide_id]) >= threshold
                    else Label.BENIGN,
                )
                for image in images
            ]
        )
        ReaderStudy.objects.filter(pk=study.pk).update(
            model_status=ReaderStudy.ModelStatus.DONE, model_status_reason=""
        )
    return len(images)


def model_probabilities(version, slides: list[Slide]) -> dict[int, float]:
    """The model's probability of metastatic per slide id: a node-image classifier runs over the
    images (``inference.image_classifier.predict_images``); a patch classifier answers with each
    whole slide's heat-map maximum from its latest scoring by that version (the node score is
    the maximum over a node's slides), so slides it has not scored are refused with their ids."""
    from inference.image_classifier import is_image_version, predict_images
    from inference.records import HeatMap

    if is_image_version(version):
        return predict_images(version, slides)
    latest: dict[int, float] = {}
    for slide_id, score in (
        HeatMap.objects.filter(model_version=version, slide__in=slides)
        .order_by("slide_id", "-created_at", "-id")
        .values_list("slide_id", "max_score")
    ):
        latest.setdefault(slide_id, score)
    missing = [s.pk for s in slides if s.pk not in latest]
    if missing:
        raise StudyInputError(
            {"model_version": f"{version.name} has not scored slide {missing[:20]}; rescore them"}
        )
    return latest


def compute_model_answers(*, study_id: int) -> str:
    """The body of the Celery task: the study's model version's probabilities for its images
    (:func:`model_probabilities`), stored as its answers. Idempotent: only a
    study whose model answers are pending, queued or failed is claimed (one worker wins)."""
    claimable = [
        ReaderStudy.ModelStatus.PENDING,
        ReaderStudy.ModelStatus.QUEUED,
        ReaderStudy.ModelStatus.FAILED,
    ]
    claimed = ReaderStudy.objects.filter(
        pk=study_id, model_status__in=claimable, model_version__isnull=False
    ).update(model_status=ReaderStudy.ModelStatus.RUNNING, model_status_reason="")
    study = ReaderStudy.objects.select_related("model_version").filter(pk=study_id).first()
    if study is None:
        return "gone"
    if claimed != 1:
        return study.model_status
    try:
        slides = [i.slide for i in study.images.select_related("slide")]
        probabilities = model_probabilities(study.model_version, slides)
        store_model_answers(study=study, probabilities=probabilities)
    except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason
        ReaderStudy.objects.filter(pk=study_id).update(
            model_status=ReaderStudy.ModelStatus.FAILED,
            model_status_reason=f"{type(exc).__name__}: {exc}"[:5000],
        )
    return ReaderStudy.objects.get(pk=study_id).model_status


# ---- reading ------------------------------------------------------------------------------------


def reader_of(study: ReaderStudy, user) -> StudyReader | None:
    return study.readers.filter(user=user).first() if user.is_authenticated else None


def reading_state(*, study: ReaderStudy, reader: StudyReader) -> dict:
    """What a reader may know: their order's length, their own answers (by position) and the
    next unanswered image. Nothing about cases, truth, the model or other readers."""
    order = [pk for pk in reader.order if pk is not None]
    existing = set(study.images.filter(pk__in=order).values_list("pk", flat=True))
    order = [pk for pk in order if pk in existing]
    mine = {
        a.image_id: a for a in ReaderAnswer.objects.filter(study=study, reader_id=reader.user_id)
    }
    answers = [
        {
            "image": pk,
            "position": position,
            "label": mine[pk].label,
            "confidence": mine[pk].confidence,
            "answered_at": mine[pk].answered_at.isoformat(),
        }
        for position, pk in enumerate(order, start=1)
        if pk in mine
    ]
    next_image = next(
        (
            {"image": pk, "position": position}
            for position, pk in enumerate(order, start=1)
            if pk not in mine
        ),
        None,
    )
    return {
        "study": {
            "id": study.pk,
            "name": study.name,
            "instructions": study.instructions,
            "status": study.status,
        },
        "total": len(order),
        "answered": len(answers),
        "next": next_image,
        "answers": answers,
    }


def position_of(reader: StudyReader, image_id: int) -> int | None:
    try:
        return reader.order.index(image_id) + 1
    except ValueError:
        return None


def record_answer(
    *, study: ReaderStudy, user, image_id: Any, label: Any, confidence: Any = None
) -> tuple[ReaderAnswer, bool]:
    """Store (or change) the reader's label of one image of an open study; returns the answer
    and whether it was new. A change is audited with before and after."""
    errors: dict[str, str] = {}
    if label not in Label.values:
        errors["label"] = f"must be one of {', '.join(Label.values)}"
    if confidence in ("", None):
        confidence = None
    else:
        confidence = _whole_number(confidence)
        if confidence is None or not 1 <= confidence <= 5:
            errors["confidence"] = "must be a whole number from 1 to 5, or empty"
    image_id = _whole_number(image_id)
    if image_id is None:
        errors["image"] = "must be an image id of this study"
    if errors:
        raise StudyInputError(errors)
    with transaction.atomic():
        locked = ReaderStudy.objects.select_for_update().get(pk=study.pk)
        if locked.status != ReaderStudy.Status.OPEN:
            raise StudyStateError(
                "the study is closed: no more answers"
                if locked.status == ReaderStudy.Status.CLOSED
                else "the study is not open yet"
            )
        reader = reader_of(locked, user)
        if reader is None or image_id not in reader.order:
            raise StudyInputError({"image": "not an image of this study"})
        answer = ReaderAnswer.objects.filter(study=locked, reader=user, image_id=image_id).first()
        if answer is None:
            answer = ReaderAnswer.objects.create(
                study=locked, reader=user, image_id=image_id, label=label, confidence=confidence
            )
            return answer, True
        before = {"label": answer.label, "confidence": answer.confidence}
        if before == {"label": label, "confidence": confidence}:
            return answer, False
        answer.label = label
        answer.confidence = confidence
        answer.answered_at = timezone.now()
        answer.changes += 1
        answer.save(update_fields=["label", "confidence", "answered_at", "changes"])
        record(
            actor=user,
            action="reader study answer changed",
            obj=answer,
            study=locked.pk,
            image=image_id,
            before=before,
            after={"label": label, "confidence": confidence},
        )
    return answer, False


def blind_tilesource(image: StudyImage) -> dict:
    """What the viewer needs to open a study image (size, tiles, scale, modality and the CT window
    presets), without its name (names can carry the case or the diagnosis, e.g. CAMELYON's
    `tumor_001`) or the slide's id: tiles come through the study's own route, which readers from
    outside every lab can reach too."""
    from django.urls import reverse

    from slides.tiles import tilesource_fields

    tile_url = reverse("study-reading-tile", args=[image.study_id, image.pk, 0, 0, 0]).replace(
        "/0/0/0.jpg", "/{z}/{x}/{y}.jpg"
    )
    return tilesource_fields(image.slide, tile_url)


# ---- progress and results ---------------------------------------------------------------------


def progress(study: ReaderStudy) -> list[dict]:
    """Answers per reader (counts only)."""
    total = study.images.count()
    counts = dict(
        ReaderAnswer.objects.filter(study=study)
        .values_list("reader_id")
        .annotate(n=Count("id"))
        .values_list("reader_id", "n")
    )
    return [
        {
            "reader": r.user_id,
            "username": r.user.username,
            "answered": counts.get(r.user_id, 0),
            "total": total,
        }
        for r in study.readers.select_related("user").order_by("user__username")
    ]


def _truth(node: Node) -> bool | None:
    if node.ground_truth == Node.GroundTruth.POSITIVE:
        return True
    if node.ground_truth == Node.GroundTruth.NEGATIVE:
        return False
    return None


def study_results(study: ReaderStudy) -> dict:
    """Every reader and the model on the images all of them answered and whose node has a
    ground truth (node positive = metastatic): sensitivity, specificity, accuracy with Wilson 95%
    CIs, and McNemar's exact test of the model against each reader. Readers with no answer yet
    are listed (metrics None) but left out of the comparison."""
    images = list(study.images.select_related("slide__node"))
    truth = {i.pk: _truth(i.slide.node) for i in images}
    readers = list(study.readers.select_related("user").order_by("user__username"))
    calls: dict[str, dict[int, bool]] = {}
    parties: list[dict] = []
    by_reader: dict[int, dict[int, bool]] = {r.user_id: {} for r in readers}
    for a in ReaderAnswer.objects.filter(study=study):
        if a.reader_id in by_reader:
            by_reader[a.reader_id][a.image_id] = a.label == Label.METASTATIC
    for r in readers:
        key = f"reader:{r.user_id}"
        calls[key] = by_reader[r.user_id]
        parties.append({"key": key, "kind": "reader", "reader": r.user_id, "name": r.user.username})
    model_calls = {
        m.image_id: m.label == Label.METASTATIC for m in ModelAnswer.objects.filter(study=study)
    }
    has_model = bool(model_calls)
    if has_model:
        calls["model"] = model_calls
        parties.append(
            {
                "key": "model",
                "kind": "model",
                "model_version": study.model_version_id,
                "name": study.model_version.name if study.model_version else "model",
                "threshold": study.operating_threshold,
            }
        )
    # A reader who has answered nothing yet is listed but not compared (else nobody would be).
    compared = [p for p in parties if calls[p["key"]]]
    known = [pk for pk in sorted(truth) if truth[pk] is not None]
    common = (
        [pk for pk in known if all(pk in calls[p["key"]] for p in compared)] if compared else []
    )
    y = [truth[pk] for pk in common]
    for party in parties:
        c = calls[party["key"]]
        party["answered"] = len(c)
        party["metrics"] = statistics.diagnostic_metrics(y, [c[pk] for pk in common]) if c else None
    comparisons = []
    if has_model:
        m = [model_calls[pk] for pk in common]
        for party in compared:
            if party["kind"] != "reader":
                continue
            r = [calls[party["key"]][pk] for pk in common]
            comparisons.append(
                {"reader": party["reader"], "name": party["name"], **statistics.mcnemar(y, m, r)}
            )
    return {
        "study": study.pk,
        "status": study.status,
        "images": len(images),
        "images_without_truth": len(images) - len(known),
        "compared_images": len(common),
        "positives": sum(y),
        "negatives": len(y) - sum(y),
        "ci_method": statistics.CI_METHOD,
        "test_method": statistics.MCNEMAR_METHOD
        + "; b = model right and reader wrong, c = model wrong and reader right",
        "model_status": study.model_status,
        "parties": parties,
        "mcnemar": comparisons,
    }


CSV_COLUMNS = [
    "study",
    "image",
    "slide",
    "case",
    "node",
    "truth",
    "reader",
    "label",
    "confidence",
    "probability",
    "threshold",
    "answered_at",
]


def answer_rows(study: ReaderStudy) -> Iterable[list]:
    """One row per reader answer, then one per model answer (reader = "model:<version>")."""
    answers = ReaderAnswer.objects.filter(study=study).select_related(
        "reader", "image__slide__node__case"
    )
    for a in answers.order_by("image_id", "reader__username"):
        node = a.image.slide.node
        yield [
            study.pk,
            a.image_id,
            a.image.slide_id,
            node.case.accession_number,
            node.label,
            node.ground_truth,
            a.reader.username,
            a.label,
            "" if a.confidence is None else a.confidence,
            "",
            "",
            a.answered_at.isoformat(),
        ]
    model = ModelAnswer.objects.filter(study=study).select_related(
        "model_version", "image__slide__node__case"
    )
    for m in model.order_by("image_id"):
        node = m.image.slide.node
        yield [
            study.pk,
            m.image_id,
            m.image.slide_id,
            node.case.accession_number,
            node.label,
            node.ground_truth,
            f"model:{m.model_version.name}",
            m.label,
            "",
            f"{m.probability:.6f}",
            f"{m.threshold:.6f}",
            m.computed_at.isoformat(),
        ]


def answers_csv(study: ReaderStudy) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in answer_rows(study):
        writer.writerow(
            [f"'{v}" if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") else v for v in row]
        )
    return out.getvalue()
