"""The "what changed" page and API of a scoring run: nodes whose screening result flipped between
two runs, with real ScoringRun and NodeScore rows, scoped to the user's labs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from inference.changes import compare_runs, previous_completed_run
from inference.records import ModelVersion, NodeScore, ScoringRun
from slides.models import Node
from tests.factories import make_case, make_user
from tests.review.factories import make_heatmap, make_model_version, make_slide

pytestmark = pytest.mark.django_db


def make_run(
    version: ModelVersion,
    *,
    status: str = ScoringRun.Status.SUCCEEDED,
    minutes_ago: int = 0,
) -> ScoringRun:
    run = ScoringRun.objects.create(
        model_version=version, threshold=version.threshold, status=status, slides_total=1
    )
    # created_at is auto_now_add: set it afterwards to order the runs in time
    ScoringRun.objects.filter(pk=run.pk).update(
        created_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    run.refresh_from_db()
    return run


def score(node: Node, run: ScoringRun, value: float, *, threshold: float | None = None):
    """The node's score in ``run``, stamped with the run's model version and threshold, with a heat
    map on the node's first slide (for the viewer link)."""
    threshold = run.threshold if threshold is None else threshold
    slide = node.slides.order_by("pk").first() or make_slide(node)
    heatmap = make_heatmap(slide, run.model_version, max_score=value, x=1200.0, y=900.0)
    return NodeScore.objects.create(
        node=node,
        model_version=run.model_version,
        scoring_run=run,
        score=value,
        threshold=threshold,
        screened_positive=None if threshold is None else value >= threshold,
        max_heatmap=heatmap,
        max_x=heatmap.max_x,
        max_y=heatmap.max_y,
    )


@pytest.fixture
def scored(people):
    """Lab A: case S26-0100 with five nodes, scored by an older run of v1 (threshold 0.5) and a
    newer run of v2 (threshold 0.6). Lab B: one node that flips too."""
    v1 = make_model_version("mobilenet-v1", threshold=0.5, live=False)
    v2 = make_model_version("mobilenet-v2", threshold=0.6, live=True)
    old = make_run(v1, minutes_ago=60)
    new = make_run(v2, minutes_ago=1)
    case = make_case(
        people.lab,
        "S26-0100",
        nodes=(
            "level II, node 1",
            "level II, node 2",
            "level III, node 3",
            "level IV, node 4",
            "level V, node 5",
        ),
    )
    n1, n2, n3, n4, n5 = case.nodes.order_by("pk")
    score(n1, old, 0.30), score(n1, new, 0.8125)  # negative -> positive
    score(n2, old, 0.90), score(n2, new, 0.125)  # positive -> negative
    score(n3, old, 0.75), score(n3, new, 0.6875)  # positive both times
    score(n4, old, 0.5625), score(n4, new, 0.5625)  # same score; flips with v2's higher threshold
    score(n5, new, 0.9)  # scored only by the new run
    other_case = make_case(people.other_lab, "B26-0001", nodes=("node 1",))
    other = other_case.nodes.get()
    score(other, old, 0.1), score(other, new, 0.95)
    return {
        "old": old,
        "new": new,
        "v1": v1,
        "v2": v2,
        "nodes": (n1, n2, n3, n4, n5),
        "other": other,
    }


def api(client, user, run, **params):
    client.force_login(user)
    return client.get(reverse("scoring-run-changes-api", args=[run.pk]), params)


def test_api_lists_flipped_nodes_with_scores_versions_thresholds_and_links(client, people, scored):
    response = api(client, people.pathologist, scored["new"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["against"]["id"] == scored["old"].pk
    assert body["against_source"] == "previous completed run"
    assert body["counts"] == {
        "compared": 4,
        "flipped": 3,
        "now_positive": 1,
        "now_negative": 2,
        "unchanged": 1,
        "without_threshold": 0,
        "only_in_run": 1,
    }
    n1, n2, _, n4, _ = scored["nodes"]
    rows = {row["node_id"]: row for row in body["results"]}
    assert set(rows) == {n1.pk, n2.pk, n4.pk}
    assert body["count"] == 3
    first = rows[n1.pk]
    assert first["direction"] == "now-positive"
    assert (first["old_score"], first["new_score"]) == (0.30, 0.8125)
    assert (first["old_threshold"], first["new_threshold"]) == (0.5, 0.6)
    assert (first["old_model_version"], first["new_model_version"]) == (
        "mobilenet-v1",
        "mobilenet-v2",
    )
    assert first["case"] == "S26-0100" and first["node"] == "level II, node 1"
    assert first["queue_url"] == f"/review/cases/{n1.case_id}/#node-{n1.pk}"
    slide = n1.slides.get()
    assert first["viewer_url"].startswith(f"/slides/{slide.pk}/view/?x=1200&y=900")
    assert f"node={n1.pk}" in first["viewer_url"]
    assert rows[n2.pk]["direction"] == "now-negative"
    # n4 scored 0.5625 both times: positive at v1's 0.5, negative at v2's 0.6
    assert (rows[n4.pk]["old_positive"], rows[n4.pk]["new_positive"]) == (True, False)


def test_one_threshold_for_both_runs_and_one_direction(client, people, scored):
    body = api(client, people.pathologist, scored["new"], threshold="0.5").json()
    assert body["threshold"] == 0.5
    assert (body["counts"]["now_positive"], body["counts"]["now_negative"]) == (1, 1)
    assert body["counts"]["unchanged"] == 2  # n4 no longer flips
    body = api(client, people.pathologist, scored["new"], direction="now-positive").json()
    assert [row["node_id"] for row in body["results"]] == [scored["nodes"][0].pk]
    assert body["counts"]["flipped"] == 3  # counts cover both directions


def test_only_nodes_of_the_users_labs_are_listed_or_counted(client, people, scored):
    other = scored["other"]
    seen_by_a = api(client, people.pathologist, scored["new"]).json()
    assert other.pk not in {row["node_id"] for row in seen_by_a["results"]}
    outsider = api(client, people.outsider, scored["new"]).json()
    assert [row["node_id"] for row in outsider["results"]] == [other.pk]
    assert outsider["counts"]["compared"] == 1
    assert outsider["counts"]["now_positive"] == 1 and outsider["counts"]["only_in_run"] == 0
    assert "S26-0100" not in str(outsider)
    # the page too
    client.force_login(people.outsider)
    page = client.get(reverse("scoring-run-changes", args=[scored["new"].pk]))
    assert page.status_code == 200
    assert b"B26-0001" in page.content and b"S26-0100" not in page.content


def test_default_is_the_latest_completed_run_over_the_same_nodes(people, scored):
    new, old = scored["new"], scored["old"]
    unfinished = make_run(scored["v1"], status=ScoringRun.Status.RUNNING, minutes_ago=5)
    score(scored["nodes"][0], unfinished, 0.99)
    elsewhere = make_run(scored["v1"], minutes_ago=4)  # completed, but no node in common
    lone = make_case(people.lab, "S26-0200").nodes.get()
    score(lone, elsewhere, 0.2)
    later = make_run(scored["v1"], minutes_ago=0)  # after the run: never "previous"
    score(scored["nodes"][0], later, 0.1)
    assert previous_completed_run(new) == old
    assert previous_completed_run(old) is None
    comparison = compare_runs(run=old, against=None, nodes=Node.objects.all())
    assert comparison.against is None and comparison.changes == []
    assert comparison.only_in_run == 5  # four of lab A's nodes and lab B's


def test_a_run_the_user_picks(client, people, scored):
    n1 = scored["nodes"][0]
    picked = make_run(scored["v1"], minutes_ago=30)
    score(n1, picked, 0.95)  # positive then: n1 stays positive against this run
    body = api(client, people.pathologist, scored["new"], against=str(picked.pk)).json()
    assert body["against"]["id"] == picked.pk and body["against_source"] == "requested"
    assert body["counts"] == {
        "compared": 1,
        "flipped": 0,
        "now_positive": 0,
        "now_negative": 0,
        "unchanged": 1,
        "without_threshold": 0,
        "only_in_run": 4,
    }
    assert body["results"] == []


def test_nodes_without_a_threshold_cannot_flip(client, people, scored):
    lone = make_case(people.lab, "S26-0300").nodes.get()
    v3 = make_model_version("uncalibrated", threshold=None, live=False)
    run = make_run(v3, minutes_ago=0)
    score(lone, scored["old"], 0.2)
    score(lone, run, 0.9)
    body = api(client, people.pathologist, run).json()
    assert body["against"]["id"] == scored["old"].pk
    assert body["counts"]["compared"] == 1 and body["counts"]["without_threshold"] == 1
    assert body["counts"]["flipped"] == 0


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"against": "abc"}, "against", "must be the id of a scoring run"),
        ({"against": "99999999"}, "against", "there is no scoring run 99999999"),
        ({"against": str(2**64)}, "against", "there is no scoring run"),
        ({"threshold": "1.5"}, "threshold", "must be a number in (0, 1]"),
        ({"threshold": "nan"}, "threshold", "must be a number in (0, 1]"),
        ({"direction": "sideways"}, "direction", "must be one of now-positive, now-negative"),
    ],
)
def test_bad_parameters_get_a_400_naming_them(client, people, scored, params, field, message):
    response = api(client, people.pathologist, scored["new"], **params)
    assert response.status_code == 400
    assert message in str(response.json()[field])
    client.force_login(people.pathologist)
    page = client.get(reverse("scoring-run-changes", args=[scored["new"].pk]), params)
    assert page.status_code == 400
    assert message.encode() in page.content.replace(b"&#x27;", b"'")


def test_comparing_a_run_with_itself_is_refused(client, people, scored):
    run = scored["new"]
    response = api(client, people.pathologist, run, against=str(run.pk))
    assert response.status_code == 400
    assert "cannot be compared with itself" in response.json()["against"][0]


def test_unknown_run_404_and_roles(client, people, scored):
    assert api(client, people.pathologist, ScoringRun(pk=424242)).status_code == 404
    client.logout()
    url = reverse("scoring-run-changes-api", args=[scored["new"].pk])
    assert client.get(url).status_code in (401, 403)
    page = client.get(reverse("scoring-run-changes", args=[scored["new"].pk]))
    assert page.status_code == 302 and "/login/" in page["Location"]
    nobody = make_user("no-role", role=None, lab=people.lab)
    assert api(client, nobody, scored["new"]).status_code == 403
    assert client.get(reverse("scoring-run-changes", args=[scored["new"].pk])).status_code == 403


def test_page_shows_counts_rows_and_links(client, people, scored):
    client.force_login(people.pathologist)
    response = client.get(reverse("scoring-run-changes", args=[scored["new"].pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert f"Compared with <strong>run {scored['old'].pk}</strong>" in html
    assert '<strong data-count="now_positive">1</strong>' in html
    assert '<strong data-count="now_negative">2</strong>' in html
    assert '<span data-count="only_in_run">1</span>' in html
    n1, n2, n3, n4, _ = scored["nodes"]
    for node in (n1, n2, n4):
        assert f'data-node="{node.pk}"' in html
    assert f'data-node="{n3.pk}"' not in html
    assert f"/review/cases/{n1.case_id}/#node-{n1.pk}" in html
    assert f"/slides/{n1.slides.get().pk}/view/?x=1200" in html
    assert "negative → positive" in html and "mobilenet-v1 (0.5)" in html


def test_page_without_an_earlier_run_says_so(client, people, scored):
    client.force_login(people.pathologist)
    response = client.get(reverse("scoring-run-changes", args=[scored["old"].pk]))
    assert response.status_code == 200
    assert b'id="no-earlier-run"' in response.content


def test_model_pages_link_to_what_changed(client, people, scored):
    client.force_login(people.pathologist)
    link = reverse("scoring-run-changes", args=[scored["new"].pk]).encode()
    assert link in client.get(reverse("models")).content
    version_page = client.get(reverse("model-version-page", args=[scored["v2"].pk])).content
    assert link in version_page
    assert reverse("scoring-run-changes", args=[scored["old"].pk]).encode() not in version_page
