"""Django's admin site, scoped to the admin's labs.

Superusers (the platform operators) see and change everything. Every other admin sees the rows of
their own labs only, in lists, change pages and the choices of forms: lab data through
`LabScopedAdmin` (the paths of `slides.access.LAB_PATHS`), users through
`slides.access.users_managed_by`.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Group
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from .access import (
    LAB_PATHS,
    admin_site_rows,
    labs_of,
    sync_staff,
    users_managed_by,
)
from .models import Case, Lab, Node, Role, Slide

User = get_user_model()


def _choices_for(model, request):
    """What a non-superuser may pick of ``model`` in a form: the rows of their labs, the users
    they manage; None for platform data (no lab), which is left as it is."""
    if model is User:
        return users_managed_by(request.user)
    path = LAB_PATHS.get(model._meta.label_lower)
    if path is None:
        return None
    return admin_site_rows(model._default_manager.all(), request.user, path)


class LabScopedAdmin(admin.ModelAdmin):
    """A model admin of lab data: lists, change pages (and so every view that finds its object
    through `get_object`) and the choices of foreign keys hold only the admin's labs' rows.

    `lab_path` leads from a row to its lab (see `slides.access.LAB_PATHS`); by default the path
    registered for the model."""

    lab_path: str | None = None

    def get_lab_path(self) -> str:
        path = self.lab_path
        if path is None:
            path = LAB_PATHS[self.model._meta.label_lower]
        return path

    def get_queryset(self, request):
        return admin_site_rows(super().get_queryset(request), request.user, self.get_lab_path())

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if not request.user.is_superuser and "queryset" not in kwargs:
            choices = _choices_for(db_field.related_model, request)
            if choices is not None:
                kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if not request.user.is_superuser and "queryset" not in kwargs:
            choices = _choices_for(db_field.related_model, request)
            if choices is not None:
                kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)


@admin.register(Lab)
class LabAdmin(LabScopedAdmin):
    """Admins manage the membership of their own labs; superusers every lab. The members widget
    offers only the users the admin manages (`users_managed_by`), and saving keeps the members it
    does not show: an admin can neither pull another lab's user in nor push one out."""

    list_display = ["code", "name"]
    filter_horizontal = ["members"]

    def save_related(self, request, form, formsets, change):
        lab = form.instance
        kept = []
        if change and not request.user.is_superuser:
            managed = users_managed_by(request.user).values("pk")
            kept = list(lab.members.exclude(pk__in=managed))
        super().save_related(request, form, formsets, change)
        if kept:
            lab.members.add(*kept)


def _role_groups():
    return Group.objects.filter(name__in=Role.values)


class LabUserCreationForm(UserAdmin.add_form):
    """The add form, with the lab the new user joins (required for lab admins, whose view holds
    only users of their labs; see `NodeScopeUserAdmin.get_form`)."""

    lab = forms.ModelChoiceField(
        queryset=Lab.objects.all(), required=False, help_text="The lab the new user belongs to"
    )


admin.site.unregister(User)


@admin.register(User)
class NodeScopeUserAdmin(UserAdmin):
    """Admins create users, set passwords and roles (groups) of the users of their own labs
    (`slides.access.users_managed_by`); only superusers see or make superusers, staff flags or
    per-user permissions, or manage users of several labs or none. A user's admin-site access
    follows the admin role (`slides.access.sync_staff`)."""

    OPERATOR_ONLY = ("is_superuser", "is_staff", "user_permissions")

    add_form = LabUserCreationForm
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "lab", "usable_password", "password1", "password2"),
            },
        ),
    )

    def get_queryset(self, request):
        users = super().get_queryset(request)
        if request.user.is_superuser:
            return users
        # the change, password and history pages find their user here: others are not found
        return users.filter(pk__in=users_managed_by(request.user).values("pk"))

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is None:
            # a fresh field per request: the lab admin picks one of their labs, the operator any
            lab = forms.ModelChoiceField(
                queryset=labs_of(request.user),
                required=not request.user.is_superuser,
                help_text="The lab the new user belongs to",
            )
            form = type(form.__name__, (form,), {"lab": lab})
        return form

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += [f for f in self.OPERATOR_ONLY if f not in fields]
        return fields

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups" and not request.user.is_superuser:
            kwargs["queryset"] = _role_groups()  # the roles, never other groups
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_related(self, request, form, formsets, change):
        user = form.instance
        kept = []
        if change and not request.user.is_superuser:
            # groups other than the roles are the operators': the form does not show them
            kept = list(user.groups.exclude(pk__in=_role_groups().values("pk")))
        super().save_related(request, form, formsets, change)
        if kept:
            user.groups.add(*kept)
        lab = None if change else form.cleaned_data.get("lab")  # one of `labs_of(admin)`
        if lab is not None:
            lab.members.add(user)
        user.__dict__.pop("_nodescope_roles", None)
        sync_staff(user)


admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class NodeScopeTokenAdmin(TokenAdmin):
    """API tokens (credentials) of the users the admin manages only, and made only for them."""

    def get_queryset(self, request):
        tokens = super().get_queryset(request)
        if request.user.is_superuser:
            return tokens
        return tokens.filter(user__in=users_managed_by(request.user).values("pk"))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = users_managed_by(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class NodeInline(admin.TabularInline):
    model = Node
    extra = 0


@admin.register(Case)
class CaseAdmin(LabScopedAdmin):
    list_display = [
        "accession_number",
        "patient_pseudonym",
        "lab",
        "project_type",
        "status",
        "created_at",
    ]
    # the lab filter lists the labs of the rows shown, not every lab's name
    list_filter = [("lab", admin.RelatedOnlyFieldListFilter), "project_type", "status"]
    search_fields = ["accession_number", "patient_pseudonym"]
    inlines = [NodeInline]


@admin.register(Slide)
class SlideAdmin(LabScopedAdmin):
    list_display = [
        "name",
        "node",
        "source",
        "width",
        "height",
        "mpp_x",
        "magnification",
        "synthetic",
    ]
    list_filter = ["source", "synthetic"]
    readonly_fields = [f.name for f in Slide._meta.fields]
