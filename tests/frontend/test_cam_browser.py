"""The class activation map of a node image in a real browser: the viewer of an ultrasound image
has the CAM panel (and not the patch Grad-CAM tool); C asks for the map (tasks run eagerly in the
live server) and lays its overlay over the whole image; the opacity slider and the method picker
act on it, and C hides it again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference.records import GradCam
from tests.browser import browser_marks

from .test_annotation_browser import open_viewer

pytestmark = browser_marks("viewer.js")

PAGE_TIMEOUT_MS = 30_000

TOP_ITEM_JS = """() => {
  const v = window.nodescopeViewer;
  const base = v.world.getItemAt(0);
  const top = v.world.getItemAt(v.world.getItemCount() - 1);
  const r = base.viewportToImageRectangle(top.getBounds());
  return {bounds: [r.x, r.y, r.width, r.height], opacity: top.getOpacity(),
          count: v.world.getItemCount()};
}"""


@pytest.fixture
def us_image(transactional_db, people, case, tmp_path, settings, eager_tasks):
    from inference.models import build_model
    from inference.synthetic_images import generate_node_image
    from slides.node_images import register_node_image
    from tests.inference.test_cam import image_version

    settings.SLIDE_IMPORT_ROOTS = []
    settings.RESULTS_DIR = str(tmp_path / "results")
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, input_size=64, widths=(8, 16, 32, 64)).eval()
    image_version(model, tmp_path)
    pixels, _ = generate_node_image(
        np.random.default_rng(3), metastatic=True, modality="ultrasound", size=160
    )
    path = tmp_path / "us.png"
    Image.fromarray(pixels[:, :144], "L").save(path)  # 144 x 160 px: not square
    return register_node_image(node=case.nodes.first(), path=path, modality="ultrasound")


def test_the_cam_toggle_shows_the_map_over_the_whole_image(page, live_server, people, us_image):
    open_viewer(page, live_server, people, us_image)
    panel = page.locator(".ns-cam-panel")
    assert panel.is_visible() and page.locator(".ns-gradcam-panel").count() == 0
    before = page.evaluate(TOP_ITEM_JS)["count"]

    page.keyboard.press("c")
    page.wait_for_selector('.ns-cam-panel[data-state="ready"]', timeout=PAGE_TIMEOUT_MS)
    record = GradCam.objects.get()
    assert record.status == GradCam.Status.SUCCEEDED and record.method == "cam"
    assert panel.get_attribute("data-shown") == str(record.pk)
    assert page.locator(".ns-cam-toggle").get_attribute("aria-pressed") == "true"
    top = page.evaluate(TOP_ITEM_JS)
    assert top["count"] == before + 1
    assert top["bounds"] == pytest.approx([0, 0, 144, 160], abs=0.5)
    assert top["opacity"] == pytest.approx(0.6)

    page.evaluate(
        """() => { const s = document.querySelector('.ns-cam-opacity');
                   s.value = '30'; s.dispatchEvent(new Event('input')); }"""
    )
    assert page.evaluate(TOP_ITEM_JS)["opacity"] == pytest.approx(0.3)

    page.select_option(".ns-cam-method", "grad-cam")
    page.wait_for_function(
        "() => { const p = document.querySelector('.ns-cam-panel');"
        " return p.dataset.method === 'grad-cam' && p.dataset.shown"
        f" && p.dataset.shown !== '{record.pk}'; }}",
        timeout=PAGE_TIMEOUT_MS,
    )
    grad = GradCam.objects.get(method="grad-cam")
    assert panel.get_attribute("data-shown") == str(grad.pk)
    opacities = page.evaluate(
        "() => { const w = window.nodescopeViewer.world; const n = w.getItemCount();"
        " return [w.getItemAt(n - 2).getOpacity(), w.getItemAt(n - 1).getOpacity()]; }"
    )
    assert opacities == pytest.approx([0.0, 0.3])  # the CAM hidden, the Grad-CAM shown

    page.keyboard.press("c")
    assert page.locator(".ns-cam-toggle").get_attribute("aria-pressed") == "false"
    assert panel.get_attribute("data-shown") == ""
    assert page.evaluate(TOP_ITEM_JS)["opacity"] == 0
    assert GradCam.objects.count() == 2
    assert not [e for e in page.console_errors if "cam" in e.lower()]
