/**
 * The annotations REST API as the drawing tools use it: session cookie plus the CSRF token in
 * `X-CSRFToken` on writes, JSON in and out, and errors turned into one readable sentence.
 *
 *   GET    /api/label-classes/
 *   GET    /api/slides/<slide>/annotations/?bbox=x0,y0,x1,y1   (annotations in view, level-0 px)
 *   POST   /api/slides/<slide>/annotations/                     {geometry, label_class}
 *   GET/PATCH/DELETE /api/annotations/<id>/                      PATCH/DELETE carry `version`
 *   POST   /api/annotations/<id>/restore/
 *   GET    /api/annotations/<id>/history/
 */

/** The value of the `csrftoken` cookie (Django's default name), or "". */
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** Every message in a DRF error body, flattened: {"geometry": ["…"]} → "…". */
export function errorMessage(body, status) {
  const messages = [];
  const visit = (value, key) => {
    if (value === null || value === undefined) return;
    if (typeof value === "string") {
      const prefix = key && !["detail", "non_field_errors", "geometry", "message", "error"].includes(key) ? `${key.replace(/_/g, " ")}: ` : "";
      messages.push(prefix + value);
    } else if (Array.isArray(value)) {
      value.forEach((v) => visit(v, key));
    } else if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) {
        if (["current", "annotation", "code", "current_version", "version"].includes(k)) continue;
        visit(v, k);
      }
    }
  };
  visit(body, "");
  if (messages.length) return messages.join(" ");
  return status ? `The server refused the change (HTTP ${status}).` : "The server could not be reached.";
}

export class ApiError extends Error {
  constructor(status, body) {
    super(errorMessage(body, status));
    this.status = status;
    this.body = body;
  }
}

/** A JSON request; resolves to the parsed body (null for 204), rejects with ApiError. */
export async function request(method, url, { body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRFToken"] = csrfToken();
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, null);
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.length > 300 ? `${text.slice(0, 300)}…` : text };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** The endpoints of one slide; `base` defaults to "/api". */
export function annotationApi(slideId, { base = "/api" } = {}) {
  const one = (id) => `${base}/annotations/${id}/`;
  return {
    labelClasses: async () => listOf(await request("GET", `${base}/label-classes/`)),

    /**
     * Every live annotation whose polygon meets `bbox` (follows pagination; `onPage(rows)` sees
     * each page as it arrives, so a large view fills in progressively). `simplify` (level-0 px,
     * 0 = none) asks for outlines simplified for a zoomed-out view, marked `simplified`.
     */
    async inView(bbox, { signal, author, labelClass, simplify = 0, onPage = null } = {}) {
      const params = new URLSearchParams({ bbox: bbox.map((v) => Math.round(v)).join(",") });
      if (author) params.set("author", author);
      if (labelClass) params.set("class", labelClass);
      if (simplify > 0) params.set("simplify", String(simplify));
      let url = `${base}/slides/${slideId}/annotations/?${params}`;
      const rows = [];
      for (let page = 0; url && page < 200; page++) {
        const data = await request("GET", url, { signal });
        const page = listOf(data);
        rows.push(...page);
        if (onPage) onPage(page);
        url = data && !Array.isArray(data) && data.next ? data.next : null;
      }
      return rows;
    },

    create: (geometry, labelClass) =>
      request("POST", `${base}/slides/${slideId}/annotations/`, { body: { geometry, label_class: labelClass } }),
    get: (id) => request("GET", one(id)),
    update: (id, version, changes) => request("PATCH", one(id), { body: { version, ...changes } }),
    remove: (id, version) => request("DELETE", `${one(id)}?version=${encodeURIComponent(version)}`, { body: { version } }),
    restore: (id, version) => request("POST", `${one(id)}restore/`, { body: { version } }),
    history: async (id) => listOf(await request("GET", `${one(id)}history/`)),
  };
}

/** A list from a plain JSON array, a DRF page ({results}) or a GeoJSON FeatureCollection. */
export function listOf(data) {
  if (!data) return [];
  if (Array.isArray(data)) return data;
  if (Array.isArray(data.results)) return data.results;
  if (Array.isArray(data.features)) return data.features;
  if (data.results && Array.isArray(data.results.features)) return data.results.features;
  return [];
}
