"""Who may see what: roles from Django groups, cases scoped to the user's labs.

Every endpoint (pages, API, tiles, thumbnails) narrows its queryset through these functions, so the
rule lives in one place. Superusers see every lab; everybody else sees only the labs they belong to.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.db.models import Count, QuerySet

from .models import Case, Lab, Node, Role, Slide

AnyUser = AbstractBaseUser | AnonymousUser


def roles_of(user: AnyUser) -> set[str]:
    """The role names a user holds (cached on the user object for the request)."""
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_nodescope_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True)) & set(Role.values)
        if user.is_superuser:
            cached.add(Role.ADMIN)
        user._nodescope_roles = cached
    return cached


def has_role(user: AnyUser, *roles: str) -> bool:
    """True if the user holds any of `roles`. Admins hold every lesser role's rights too."""
    held = roles_of(user)
    if Role.ADMIN in held:
        return True
    if Role.LAB_LEAD in held and Role.PATHOLOGIST in roles:
        return True
    return bool(held & set(roles))


#: What the admin role does in Django's admin site: users (and their roles), label classes, the
#: membership of its own labs, clinical variables, and reading the audit log. Case data stays in
#: the app, where every view is scoped to the user's labs.
ADMIN_SITE_PERMISSIONS = (
    "auth.add_user",
    "auth.change_user",
    "auth.view_user",
    "auth.view_group",
    "annotations.add_labelclass",
    "annotations.change_labelclass",
    "annotations.view_labelclass",
    "slides.view_lab",
    "slides.change_lab",
    "clinical.add_clinicalfield",
    "clinical.change_clinicalfield",
    "clinical.view_clinicalfield",
    "audit.view_auditevent",
)


def admin_site_permissions() -> QuerySet:
    """The Permission rows of :data:`ADMIN_SITE_PERMISSIONS` (those whose app is installed)."""
    from django.contrib.auth.models import Permission
    from django.db.models import Q

    wanted = Q(pk__in=[])
    for name in ADMIN_SITE_PERMISSIONS:
        app_label, codename = name.split(".")
        wanted |= Q(content_type__app_label=app_label, codename=codename)
    return Permission.objects.filter(wanted)


def sync_staff(user: AbstractBaseUser) -> None:
    """Admins (and superusers) reach Django's admin site, within the admin group's permissions;
    nobody else does."""
    staff = bool(user.is_superuser) or user.groups.filter(name=Role.ADMIN.value).exists()
    if user.is_staff != staff:
        user.is_staff = staff
        user.save(update_fields=["is_staff"])


def grant_role(user: AbstractBaseUser, role: str) -> None:
    """Put a user in the group of a role (created on first use); admins become staff of the
    admin site with the admin group's permissions."""
    group, _ = Group.objects.get_or_create(name=Role(role).value)
    if role == Role.ADMIN:
        group.permissions.add(*admin_site_permissions())
    user.groups.add(group)
    user.__dict__.pop("_nodescope_roles", None)
    sync_staff(user)


def blinded_cases(user: AbstractBaseUser) -> QuerySet | None:
    """The ids of the cases a user must not see while they read a reader study blind: every case
    holding an image of an *open* study they read (its ground truth, heat maps, scores, review
    decisions and names would give their answers away). They see those cases again once the
    study closes. A subquery, or None when the studies app is not installed."""
    from django.apps import apps

    try:
        study_image = apps.get_model("studies", "StudyImage")
        open_status = apps.get_model("studies", "ReaderStudy").Status.OPEN
    except LookupError:  # pragma: no cover - the studies app is part of the platform
        return None
    # one filter() call: the open study and the reader are the same study
    return study_image.objects.filter(study__status=open_status, study__readers__user=user).values(
        "slide__node__case_id"
    )


def _visible(queryset: QuerySet, user: AnyUser, case_path: str) -> QuerySet:
    """``queryset`` narrowed to the user's labs (every lab for superusers), less the cases they
    read blind (:func:`blinded_cases`); ``case_path`` leads from its rows to their case."""
    if not user.is_authenticated or not roles_of(user):
        return queryset.none()
    if not user.is_superuser:
        queryset = queryset.filter(**{f"{case_path}lab__members": user})
    blinded = blinded_cases(user)
    if blinded is not None:
        queryset = queryset.exclude(**{f"{case_path}pk__in": blinded})
    return queryset


def cases_for(user: AnyUser) -> QuerySet[Case]:
    """Cases the user may see: those of their labs (every lab for superusers), except those they
    read blind in an open reader study."""
    return _visible(Case.objects.all(), user, "")


def nodes_for(user: AnyUser) -> QuerySet[Node]:
    return _visible(Node.objects.all(), user, "case__")


def slides_for(user: AnyUser) -> QuerySet[Slide]:
    """Slides the user may see; indexed joins, cheap enough for every tile request (whose answer
    is also remembered per session for a few seconds)."""
    return _visible(Slide.objects.all(), user, "node__case__")


# ---- platform-wide models -----------------------------------------------------------------------

#: Who may change the live models: said on the Models page and in refusals.
PROMOTERS = "platform operators (superusers and holders of the platform admin role)"


def may_promote_models(user: AnyUser) -> bool:
    """True if ``user`` may change what every lab screens with: promote or roll back a live model,
    choose a model's operating point, cancel another user's training run. The live model is
    platform-wide (one per stage for every lab), so this is a platform role, not a lab one: lab
    admins train on their own labs' data but do not put a model live."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser) or Role.PLATFORM_ADMIN in roles_of(user)


# ---- Django's admin site: lab admins manage their own labs only -----------------------------------

#: How a row of each lab-data model leads to its lab (an ORM path to `slides.Lab`; "" for a lab
#: itself). The admin site scopes its lists and choices through it (`slides.admin.LabScopedAdmin`)
#: and the audit log files events under the lab of their object (`lab_id_of`). A model missing
#: here has no lab: platform data (label classes, clinical variables, models, training runs).
LAB_PATHS: dict[str, str] = {
    "slides.lab": "",
    "slides.case": "lab",
    "slides.node": "case__lab",
    "slides.slide": "node__case__lab",
    "annotations.annotation": "slide__node__case__lab",
    "annotations.annotationimport": "slide__node__case__lab",
    "annotations.annotationhistory": "annotation__slide__node__case__lab",
    "review.reviewdecision": "node__case__lab",
    "review.viewedregion": "node__case__lab",
    "review.casesignoff": "case__lab",
    "review.reviewercorrection": "node__case__lab",
    "review.reviewsettings": "lab",
    "clinical.clinicalrecord": "case__lab",
    "inference.heatmap": "slide__node__case__lab",
    "inference.nodescore": "node__case__lab",
    "inference.gradcam": "slide__node__case__lab",
    "inference.slidescoring": "slide__node__case__lab",
    "studies.readerstudy": "lab",
    "studies.studyimage": "study__lab",
    "studies.studyreader": "study__lab",
    "studies.readeranswer": "study__lab",
    "studies.modelanswer": "study__lab",
    "audit.auditevent": "lab",
}


def labs_of(user: AnyUser) -> QuerySet[Lab]:
    """The labs a user belongs to (every lab for superusers, none for anonymous users)."""
    if not user.is_authenticated:
        return Lab.objects.none()
    return Lab.objects.all() if user.is_superuser else Lab.objects.filter(members=user)


def users_managed_by(admin: AnyUser) -> QuerySet:
    """The users an admin may see and change in the admin site (their password, roles, labs).

    Superusers (the platform operators) manage everybody. An admin manages a user who is not a
    superuser and belongs to exactly one lab, that lab being one of the admin's. Users of several
    labs, and users of no lab, are the operators' alone: no lab's admin may take them over."""
    users = get_user_model().objects.all()
    if not admin.is_authenticated:
        return users.none()
    if admin.is_superuser:
        return users
    if Role.ADMIN not in roles_of(admin):
        return users.none()
    membership = Lab.members.through.objects
    in_my_labs = membership.filter(lab__in=labs_of(admin)).values("user_id")
    in_one_lab = (
        membership.values("user_id").annotate(labs=Count("lab_id")).filter(labs=1).values("user_id")
    )
    return users.filter(is_superuser=False, pk__in=in_my_labs).filter(pk__in=in_one_lab)


def within_labs(queryset: QuerySet, labs: QuerySet[Lab], path: str) -> QuerySet:
    """``queryset`` narrowed to rows whose lab (reached through ``path``, see
    :data:`LAB_PATHS`) is among ``labs``; rows without a lab are left out."""
    return queryset.filter(**{f"{path}__in" if path else "pk__in": labs.values("pk")})


def admin_site_rows(queryset: QuerySet, user: AnyUser, path: str) -> QuerySet:
    """The rows of a lab-data model a user sees in the admin site: every row for superusers,
    the rows of their own labs for everybody else."""
    if user.is_authenticated and user.is_superuser:
        return queryset
    return within_labs(queryset, labs_of(user), path)


def lab_id_of(obj: object) -> int | None:
    """The id of the lab an object belongs to, following :data:`LAB_PATHS` through its (cached)
    relations; None for objects without one (users, platform data) or whose chain is broken."""
    from django.core.exceptions import ObjectDoesNotExist

    meta = getattr(obj, "_meta", None)
    path = LAB_PATHS.get(meta.label_lower) if meta is not None else None
    if path is None:
        return None
    if path == "":
        return obj.pk
    *hops, last = path.split("__")
    try:
        for hop in hops:
            obj = getattr(obj, hop)
            if obj is None:
                return None
        return getattr(obj, f"{last}_id")
    except ObjectDoesNotExist:
        return None
