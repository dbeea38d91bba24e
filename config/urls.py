"""URL wiring: pages at the root, the REST API under /api/."""

from __future__ import annotations

from importlib.util import find_spec

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from annotations import urls as annotation_urls
from inference import urls as inference_urls
from review import urls as review_urls
from slides import urls as slide_urls
from slides import views as slide_views
from slides.auth import ThrottledLoginView
from studies import urls as study_urls

api_urls = []
# Each domain app contributes its own API routes (annotations, inference, review) when present.
for app in ("annotations", "inference", "review", "clinical", "studies"):
    if find_spec(f"{app}.urls") is not None:
        api_urls.append(path("", include(f"{app}.urls")))
api_urls.append(path("", include("inference.heatmap_urls")))
api_urls.append(path("", include("inference.mil_overlay_urls")))
api_urls += slide_urls.api_urls
api_urls.append(path("schema/", SpectacularAPIView.as_view(), name="api-schema"))

urlpatterns = [
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("health/", slide_views.health, name="health"),
    path("admin/", admin.site.urls),
    path("api/", include(api_urls)),
    path("", include(annotation_urls.page_urls)),
    path("", include(inference_urls.page_urls)),
    path("", include(review_urls.page_urls)),
    path("", include(slide_urls.page_urls)),
    path("", include("clinical.page_urls")),
    path("", include(study_urls.page_urls)),
]

# A bad query parameter (config.params.BadParameter) in a page view: a 400 naming it.
handler400 = "config.params.bad_request"
