"""Log-ins, failed log-ins and user changes go to the audit log."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_save
from django.dispatch import receiver

from .log import record


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    record(actor=user, action="login", obj=user)


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    record(actor=None, action="login failed", username=str(credentials.get("username", ""))[:150])


@receiver(post_save, sender=get_user_model())
def _user_saved(sender, instance, created, **kwargs):
    if kwargs.get("raw"):
        return
    fields = kwargs.get("update_fields")
    if fields and set(fields) <= {"last_login"}:
        return
    record(actor=None, action="user created" if created else "user changed", obj=instance)
