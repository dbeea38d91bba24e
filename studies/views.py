"""Reader-study API and pages (rules in `studies.services`).

Managers (lab leads and admins of the study's lab) create, open, close, follow and compare;
readers reach only `reading/` (their own state, the next image, their answers) and the blind
tile source of the study's images. Studies one neither manages nor reads are 404.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from slides.access import has_role, roles_of, slides_for
from slides.auth import api_user
from slides.models import Role
from slides.views import serve_tile

from . import services
from .models import Label, ReaderStudy, StudyStateError

# ---- helpers ------------------------------------------------------------------------------------


def _study(user, pk: int) -> ReaderStudy:
    """A study the user manages or reads, else 404."""
    return get_object_or_404(
        services.visible_studies(user).select_related("lab", "model_version", "created_by"), pk=pk
    )


def _managed(user, pk: int) -> ReaderStudy:
    study = _study(user, pk)
    if not services.can_manage(user, study):
        raise PermissionDenied("Only lab leads and admins of the study's lab manage it.")
    return study


def _with_answers(user, pk: int) -> ReaderStudy:
    study = _managed(user, pk)
    if not services.can_see_answers(user, study):
        raise PermissionDenied("You read this study: its answers and results open when it closes.")
    return study


def _read(user, pk: int) -> tuple[ReaderStudy, object]:
    """A study the user reads (404 for everybody else, managers included) and their reader row."""
    study = get_object_or_404(ReaderStudy.objects.filter(readers__user=user), pk=pk)
    return study, services.reader_of(study, user)


def _conflict(exc: Exception) -> Response:
    return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)


def study_json(study: ReaderStudy, user) -> dict:
    """The manager's view of a study; images carry case, node and truth only for those who may
    see answers (a manager who also reads it gets slide ids only while it is open)."""
    full = services.can_see_answers(user, study)
    images = study.images.select_related("slide__node__case")
    return {
        "id": study.pk,
        "name": study.name,
        "lab": study.lab_id,
        "instructions": study.instructions,
        "status": study.status,
        "created_by": study.created_by.username if study.created_by else None,
        "created_at": study.created_at.isoformat(),
        "opened_at": study.opened_at.isoformat() if study.opened_at else None,
        "closed_at": study.closed_at.isoformat() if study.closed_at else None,
        "model_version": study.model_version_id,
        "threshold": study.threshold,
        "operating_threshold": study.operating_threshold,
        "model_status": study.model_status,
        "model_status_reason": study.model_status_reason,
        "images": [
            {
                "image": i.pk,
                "slide": i.slide_id,
                **(
                    {
                        "case": i.slide.node.case.accession_number,
                        "node": i.slide.node.label,
                        "truth": i.slide.node.ground_truth,
                    }
                    if full
                    else {}
                ),
            }
            for i in images
        ],
        "readers": [
            {"reader": r.user_id, "username": r.user.username}
            for r in study.readers.select_related("user")
        ],
        "progress": services.progress(study),
    }


# ---- API: managers ------------------------------------------------------------------------------


class StudyListView(APIView):
    """Studies one manages or reads (GET); create a draft study (POST, lab leads and admins):
    {"name", "lab", "instructions", "images": [slide ids], "readers": [user ids],
    "model_version": id | null, "threshold": 0..1 | null (null: the version's)}."""

    parser_classes = [JSONParser]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        rows = services.visible_studies(request.user).select_related("lab")
        return Response(
            {
                "studies": [
                    {
                        "id": s.pk,
                        "name": s.name,
                        "status": s.status,
                        "manager": services.can_manage(request.user, s),
                        "reader": services.is_reader(request.user, s),
                    }
                    for s in rows
                ]
            }
        )

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        if not has_role(request.user, Role.LAB_LEAD):
            raise PermissionDenied("Only lab leads and admins create reader studies.")
        if not isinstance(request.data, dict):
            raise ValidationError({"detail": "send a JSON object"})
        try:
            study = services.create_study(user=request.user, data=request.data)
        except services.StudyInputError as exc:
            raise ValidationError(exc.errors) from exc
        return Response(study_json(study, request.user), status=status.HTTP_201_CREATED)


class StudyDetailView(APIView):
    """A study with its images, readers and progress (GET); change a draft (PATCH)."""

    parser_classes = [JSONParser]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        return Response(study_json(_managed(request.user, pk), request.user))

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def patch(self, request, pk: int):
        study = _managed(request.user, pk)
        if not isinstance(request.data, dict):
            raise ValidationError({"detail": "send a JSON object"})
        try:
            study = services.update_study(study=study, user=request.user, data=request.data)
        except services.StudyInputError as exc:
            raise ValidationError(exc.errors) from exc
        except StudyStateError as exc:
            return _conflict(exc)
        return Response(study_json(study, request.user))


class StudyOpenView(APIView):
    """Open a draft study: each reader's order is fixed; 409 if not a draft or empty."""

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk: int):
        study = _managed(request.user, pk)
        try:
            study = services.open_study(study=study, user=request.user)
        except StudyStateError as exc:
            return _conflict(exc)
        return Response(study_json(study, request.user))


class StudyCloseView(APIView):
    """Close an open study (no more answers); the model's answers are then computed on the
    `gpu` queue. 409 if it is not open."""

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk: int):
        study = _managed(request.user, pk)
        try:
            study = services.close_study(study=study, user=request.user)
        except StudyStateError as exc:
            return _conflict(exc)
        study.refresh_from_db()
        return Response(study_json(study, request.user))


class StudyModelAnswersView(APIView):
    """Queue the model's answers again for a closed study (after a failure); 409 otherwise."""

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk: int):
        from config.queueing import check_queue_reachable

        study = _managed(request.user, pk)
        if study.status != ReaderStudy.Status.CLOSED or study.model_version_id is None:
            return _conflict(StudyStateError("only a closed study with a model version"))
        if study.model_status not in (
            ReaderStudy.ModelStatus.PENDING,
            ReaderStudy.ModelStatus.FAILED,
        ):
            return _conflict(StudyStateError(f"the model's answers are {study.model_status}"))
        check_queue_reachable()
        services.queue_model_answers(study.pk)
        study.refresh_from_db()
        return Response(
            {"model_status": study.model_status, "reason": study.model_status_reason},
            status=status.HTTP_202_ACCEPTED,
        )


class StudyResultsView(APIView):
    """Every reader and the model on the same images: sensitivity, specificity, accuracy (Wilson
    95% CIs) and McNemar's exact test of the model against each reader."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        return Response(services.study_results(_with_answers(request.user, pk)))


class StudyAnswersCSVView(APIView):
    """Every answer as CSV: study, image, slide, case, node, truth, reader, label, confidence,
    probability, threshold, answered_at (the model's rows carry probability and threshold)."""

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request, pk: int):
        study = _with_answers(request.user, pk)
        response = HttpResponse(services.answers_csv(study), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="reader-study-{study.pk}.csv"'
        return response


# ---- API: readers -------------------------------------------------------------------------------


class ReadingView(APIView):
    """The reader's own state: study name, instructions and status, their progress, the next
    unanswered image in their order, and their own answers. Never any case, truth, model output
    or other reader's answer."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        study, reader = _read(request.user, pk)
        return Response(services.reading_state(study=study, reader=reader))


class ReadingAnswerView(APIView):
    """Answer (or change the answer to) one image: {"image", "label": "metastatic" | "benign",
    "confidence": 1..5 | null}. 201 new, 200 changed; 409 when the study is not open."""

    parser_classes = [JSONParser]

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk: int):
        study, _reader = _read(request.user, pk)
        data = request.data if isinstance(request.data, dict) else {}
        try:
            answer, new = services.record_answer(
                study=study,
                user=request.user,
                image_id=data.get("image"),
                label=data.get("label"),
                confidence=data.get("confidence"),
            )
        except services.StudyInputError as exc:
            raise ValidationError(exc.errors) from exc
        except StudyStateError as exc:
            return _conflict(exc)
        return Response(
            {
                "image": answer.image_id,
                "label": answer.label,
                "confidence": answer.confidence,
                "answered_at": answer.answered_at.isoformat(),
            },
            status=status.HTTP_201_CREATED if new else status.HTTP_200_OK,
        )


class ReadingTileSourceView(APIView):
    """What the viewer needs to open one of the study's images, without its name."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int, image: int):
        study, reader = _read(request.user, pk)
        return Response(services.blind_tilesource(_reading_image(study, reader, image)))


def _reading_image(study: ReaderStudy, reader, image: int):
    """One of the reader's images of the study (404 for any other id)."""
    if image not in reader.order:
        raise Http404("No such image in this study")
    found = study.images.select_related("slide").filter(pk=image).first()
    if found is None:
        raise Http404("No such image in this study")
    return found


@require_GET
def reading_tile(request: HttpRequest, pk: int, image: int, z: int, x: int, y: int):
    """A tile of a study image for its readers: the only way an external reader (no lab) sees
    pixels of the lab's, and the slide's id never shows. 403 without login, 404 for non-readers."""
    user = api_user(request)
    if user is None:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    study, reader = _read(user, pk)
    found = _reading_image(study, reader, image)
    # The ETag is keyed on the study and image, not the file: it must not reveal the slide.
    return serve_tile(request, found.slide, z, x, y, blind_scope=f"study:{study.pk}:{found.pk}")


# ---- pages --------------------------------------------------------------------------------------


def _page_study(request: HttpRequest, pk: int, *, answers: bool = False) -> ReaderStudy:
    study = _study(request.user, pk)
    if not services.can_manage(request.user, study):
        raise DjangoPermissionDenied("Only lab leads and admins of the study's lab manage it.")
    if answers and not services.can_see_answers(request.user, study):
        raise DjangoPermissionDenied(
            "You read this study: its answers and results open when it closes."
        )
    return study


@login_required
def study_list_page(request: HttpRequest) -> HttpResponse:
    """Studies one manages (with progress) and studies one reads (with a link to read)."""
    studies = list(services.visible_studies(request.user).select_related("lab"))
    managed = [s for s in studies if services.can_manage(request.user, s)]
    reading = [
        (s, services.reading_state(study=s, reader=services.reader_of(s, request.user)))
        for s in studies
        if services.is_reader(request.user, s) and s.status != ReaderStudy.Status.DRAFT
    ]
    return render(
        request,
        "studies/list.html",
        {
            "managed": managed,
            "reading": reading,
            "can_create": has_role(request.user, Role.LAB_LEAD),
        },
    )


def _form_ids(values: list[str]) -> list[int]:
    out = []
    for v in values:
        if v.isascii() and v.isdigit() and len(v) < 19:
            out.append(int(v))
    return out


def _form_data(request: HttpRequest) -> dict:
    """The study fields of the create/edit form."""
    return {
        "name": request.POST.get("name", ""),
        "instructions": request.POST.get("instructions", ""),
        "images": _form_ids(request.POST.getlist("images")),
        "readers": _form_ids(request.POST.getlist("readers")),
        "model_version": (_form_ids([request.POST.get("model_version", "")]) or [None])[0],
        "threshold": request.POST.get("threshold") or None,
    }


def _render_form(
    request: HttpRequest,
    *,
    labs,
    lab,
    errors: dict,
    shown: dict,
    images: set[int],
    readers: set[int],
    study: ReaderStudy | None = None,
    status_code: int = 200,
) -> HttpResponse:
    from inference.records import ModelVersion

    slides = (
        slides_for(request.user)
        .filter(node__case__lab=lab)
        .select_related("node__case")
        .order_by("node__case__accession_number", "node__label", "name")
        if lab
        else []
    )
    members = [u for u in services.possible_readers(lab) if roles_of(u)] if lab else []
    return render(
        request,
        "studies/create.html",
        {
            "study": study,
            "labs": labs,
            "lab": lab,
            "slides": slides,
            "members": members,
            "versions": ModelVersion.objects.order_by("-created_at")[:200],
            "errors": errors,
            "posted": shown,
            "chosen_images": images,
            "chosen_readers": readers,
        },
        status=status_code,
    )


@login_required
@require_http_methods(["GET", "POST"])
def study_create_page(request: HttpRequest) -> HttpResponse:
    """Choose a lab, then the study's images, readers and model version."""
    if not has_role(request.user, Role.LAB_LEAD):
        raise DjangoPermissionDenied("Only lab leads and admins create reader studies.")
    labs = services.managed_labs(request.user).order_by("name")
    raw_lab = request.POST.get("lab") or request.GET.get("lab") or ""
    lab = (
        labs.filter(pk=int(raw_lab)).first()
        if raw_lab.isascii() and raw_lab.isdigit() and len(raw_lab) < 19
        else None
    )
    if lab is None and labs.count() == 1:
        lab = labs.first()
    errors: dict = {}
    if request.method == "POST" and lab is not None:
        try:
            study = services.create_study(
                user=request.user, data={**_form_data(request), "lab": lab.pk}
            )
        except services.StudyInputError as exc:
            errors = exc.errors
        else:
            return redirect("study-detail", pk=study.pk)
    return _render_form(
        request,
        labs=labs,
        lab=lab,
        errors=errors,
        shown=request.POST,
        images=set(_form_ids(request.POST.getlist("images"))),
        readers=set(_form_ids(request.POST.getlist("readers"))),
        status_code=400 if errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def study_edit_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a draft study (the same form as creating one); 409 once it is open."""
    study = _page_study(request, pk)
    errors: dict = {}
    code = 200
    if study.status != ReaderStudy.Status.DRAFT:
        errors, code = {"study": f"the study is {study.status}; only a draft can be changed"}, 409
    elif request.method == "POST":
        try:
            services.update_study(study=study, user=request.user, data=_form_data(request))
        except services.StudyInputError as exc:
            errors, code = exc.errors, 400
        except StudyStateError as exc:
            errors, code = {"study": str(exc)}, 409
        else:
            return redirect("study-detail", pk=study.pk)
    if request.method == "POST":
        shown = request.POST
        images = set(_form_ids(request.POST.getlist("images")))
        readers = set(_form_ids(request.POST.getlist("readers")))
    else:
        shown = {
            "name": study.name,
            "instructions": study.instructions,
            "model_version": str(study.model_version_id or ""),
            "threshold": "" if study.threshold is None else str(study.threshold),
        }
        images = set(study.images.values_list("slide_id", flat=True))
        readers = set(study.readers.values_list("user_id", flat=True))
    return _render_form(
        request,
        labs=None,
        lab=study.lab,
        errors=errors,
        shown=shown,
        images=images,
        readers=readers,
        study=study,
        status_code=code,
    )


@login_required
@require_http_methods(["GET", "POST"])
def study_detail_page(request: HttpRequest, pk: int) -> HttpResponse:
    """A study's set-up and progress; POST action=open|close."""
    study = _page_study(request, pk)
    error = ""
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "open":
                services.open_study(study=study, user=request.user)
            elif action == "close":
                services.close_study(study=study, user=request.user)
            else:
                return HttpResponse("action must be open or close", status=400)
        except StudyStateError as exc:
            error = str(exc)
        else:
            return redirect("study-detail", pk=study.pk)
        study.refresh_from_db()
    return render(
        request,
        "studies/detail.html",
        {
            "study": study,
            "data": study_json(study, request.user),
            "see_answers": services.can_see_answers(request.user, study),
            "error": error,
        },
        status=409 if error else 200,
    )


@login_required
def study_results_page(request: HttpRequest, pk: int) -> HttpResponse:
    study = _page_study(request, pk, answers=True)
    results = services.study_results(study)
    for party in results["parties"]:
        m = party["metrics"]
        party["estimates"] = [m["sensitivity"], m["specificity"], m["accuracy"]] if m else []
    return render(request, "studies/results.html", {"study": study, "results": results})


@login_required
@require_http_methods(["GET", "POST"])
def study_read_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The reader's page: the next unanswered image (or ?image=<id> to change an earlier answer)
    in the viewer, with Metastatic / Benign buttons and a confidence. Blind: no case, slide
    name, truth, model output or other readers' answers."""
    study, reader = _read(request.user, pk)
    error = ""
    code = 200
    if request.method == "POST":
        try:
            services.record_answer(
                study=study,
                user=request.user,
                image_id=request.POST.get("image"),
                label=request.POST.get("label"),
                confidence=request.POST.get("confidence"),
            )
        except services.StudyInputError as exc:
            error, code = "; ".join(f"{k}: {v}" for k, v in exc.errors.items()), 400
        except StudyStateError as exc:
            error, code = str(exc), 409
        else:
            return redirect("study-read", pk=study.pk)
        study.refresh_from_db()
    state = services.reading_state(study=study, reader=reader)
    current = state["next"]
    raw = request.GET.get("image") or (request.POST.get("image") if error else None)
    if raw:
        wanted = _form_ids([raw])
        position = services.position_of(reader, wanted[0]) if wanted else None
        if position is None:
            raise Http404("No such image in this study")
        current = {"image": wanted[0], "position": position}
    mine = {a["image"]: a for a in state["answers"]}
    return render(
        request,
        "studies/read.html",
        {
            "study": study,
            "state": state,
            "current": current,
            "current_answer": mine.get(current["image"]) if current else None,
            "labels": Label.choices,
            "confidences": range(1, 6),
            "error": error,
            "is_open": study.status == ReaderStudy.Status.OPEN,
        },
        status=code,
    )
