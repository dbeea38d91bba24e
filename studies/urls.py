"""Reader-study routes. `urlpatterns` (API) is included under /api/ by config/urls.py;
`page_urls` at the root."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("studies/", views.StudyListView.as_view(), name="study-list-api"),
    path("studies/<int:pk>/", views.StudyDetailView.as_view(), name="study-detail-api"),
    path("studies/<int:pk>/open/", views.StudyOpenView.as_view(), name="study-open"),
    path("studies/<int:pk>/close/", views.StudyCloseView.as_view(), name="study-close"),
    path(
        "studies/<int:pk>/model-answers/",
        views.StudyModelAnswersView.as_view(),
        name="study-model-answers",
    ),
    path("studies/<int:pk>/results/", views.StudyResultsView.as_view(), name="study-results-api"),
    path(
        "studies/<int:pk>/answers.csv",
        views.StudyAnswersCSVView.as_view(),
        name="study-answers-csv",
    ),
    path("studies/<int:pk>/reading/", views.ReadingView.as_view(), name="study-reading"),
    path(
        "studies/<int:pk>/reading/answers/",
        views.ReadingAnswerView.as_view(),
        name="study-reading-answers",
    ),
    path(
        "studies/<int:pk>/reading/images/<int:image>/tilesource/",
        views.ReadingTileSourceView.as_view(),
        name="study-reading-tilesource",
    ),
    path(
        "studies/<int:pk>/reading/images/<int:image>/tiles/<int:z>/<int:x>/<int:y>.jpg",
        views.reading_tile,
        name="study-reading-tile",
    ),
]

page_urls = [
    path("studies/", views.study_list_page, name="study-list"),
    path("studies/new/", views.study_create_page, name="study-create"),
    path("studies/<int:pk>/", views.study_detail_page, name="study-detail"),
    path("studies/<int:pk>/edit/", views.study_edit_page, name="study-edit"),
    path("studies/<int:pk>/results/", views.study_results_page, name="study-results"),
    path("studies/<int:pk>/read/", views.study_read_page, name="study-read"),
]
