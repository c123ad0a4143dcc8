// comfy-cluster in ComfyUI's own UI (frontend 1.27): the RunPod min-workers button in the
// top bar and the "Cluster" sidebar tab. The page only calls this package's routes; the
// RunPod key and endpoint id stay on the server.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STATUS_EVENT = "comfy_cluster.status";
const LABELS = {
  0: "Min Workers: 0 (Cost Saving)",
  1: "Min Workers: 1 (Always Ready)",
};
const cluster = { snapshot: null, tabElement: null };

async function getJson(route, options) {
  const resp = await api.fetchApi(route, options);
  let body;
  try {
    body = await resp.json();
  } catch (err) {
    return { status: "error", message: `${route}: HTTP ${resp.status}, not JSON` };
  }
  return body;
}

function toast(severity, summary, detail) {
  app.extensionManager.toast.add({ severity, summary, detail, life: 5000 });
}

// ------------------------------------------------------------------ the min-workers button
function labelFor(min) {
  return min >= 1 ? LABELS[1] : LABELS[0];
}

function setButton(button, min, error) {
  button.workersMin = min;
  button.enabled = true;
  button.element.classList.remove("comfy-cluster-loading");
  if (error) {
    button.content = "Min Workers: ? (RunPod unavailable)";
    button.tooltip = error;
  } else {
    button.content = labelFor(min);
    button.tooltip = "RunPod min workers: click to switch";
  }
}

async function refreshButton(button) {
  const body = await getJson("/comfy_cluster/workers");
  if (body.status === "ok") setButton(button, body.workersMin, null);
  else setButton(button, null, body.message);
}

async function toggle(button) {
  if (button.workersMin === null || button.workersMin === undefined) {
    await refreshButton(button);
    return;
  }
  const target = button.workersMin >= 1 ? 0 : 1;
  button.enabled = false;
  button.element.classList.add("comfy-cluster-loading");
  button.content = `Min Workers: setting ${target}…`;
  const body = await getJson("/comfy_cluster/workers/min", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ workersMin: target }),
  });
  if (body.status === "ok") {
    setButton(button, body.workersMin, null);
    toast("success", "RunPod", body.message);
  } else {
    setButton(button, button.workersMin, null);
    toast("error", "RunPod min workers", body.message);
  }
}

async function addButton() {
  const { ComfyButton } = await import("../../scripts/ui/components/button.js");
  const { ComfyButtonGroup } = await import("../../scripts/ui/components/buttonGroup.js");
  const button = new ComfyButton({
    icon: "cloud-outline",
    content: "Min Workers: …",
    tooltip: "RunPod min workers: click to switch",
    classList: "comfyui-button comfyui-menu-mobile-collapse primary comfy-cluster-min-workers",
    action: () => toggle(button),
  });
  button.workersMin = null;
  // The one place that knows where the top bar is (it moved in later frontends).
  app.menu.settingsGroup.element.before(new ComfyButtonGroup(button.element).element);
  refreshButton(button);
  return button;
}

// ------------------------------------------------------------------ the Cluster sidebar tab
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  td.style.padding = "2px 4px 2px 0";
  if (cls) td.className = cls;
  row.appendChild(td);
}

function seconds(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} s`;
}

// "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync" -> "RTX 4090"
function gpu(server) {
  const devices = server.devices || [];
  if (!devices.length) return "–";
  return devices
    .map((d) => String(d.name || d.type || "?")
      .replace(/^\S+:\d+\s+/, "")
      .replace(/\s+:\s+\S+$/, "")
      .replace(/^NVIDIA\s+(GeForce\s+)?/, ""))
    .join(", ");
}

function renderTab() {
  const el = cluster.tabElement;
  if (!el) return;
  const snap = cluster.snapshot;
  el.replaceChildren();
  const root = document.createElement("div");
  root.className = "comfy-cluster-panel";
  root.style.padding = "8px";
  const title = document.createElement("h3");
  title.textContent = "Cluster";
  root.appendChild(title);
  if (!snap) {
    root.appendChild(document.createTextNode("Loading…"));
  } else if (snap.status !== "ok") {
    const p = document.createElement("p");
    p.className = "comfy-cluster-error";
    p.textContent = snap.message;
    root.appendChild(p);
  } else {
    const table = document.createElement("table");
    table.className = "comfy-cluster-servers";
    table.style.cssText = "width:100%;font-size:12px;border-collapse:collapse";
    const head = document.createElement("tr");
    const titles = { Queue: "running + pending", "s/job": "seconds per job (recent average)" };
    for (const h of ["Server", "State", "Queue", "GPU", "s/job"]) {
      const th = document.createElement("th");
      th.textContent = h;
      th.title = titles[h] || "";
      th.style.cssText = "text-align:left;padding:2px 4px 2px 0";
      head.appendChild(th);
    }
    table.appendChild(head);
    for (const s of snap.servers) {
      const row = document.createElement("tr");
      row.dataset.server = s.name;
      row.className = `comfy-cluster-server state-${s.state}`;
      row.title = s.last_error || s.address;
      cell(row, s.name, "name");
      cell(row, s.enabled ? s.state : `${s.state} (disabled)`, "state");
      cell(row, `${s.queue_running}+${s.queue_pending}`, "queue");
      cell(row, gpu(s), "gpu");
      cell(row, seconds(s.seconds_per_job), "spj");
      table.appendChild(row);
    }
    const rp = snap.runpod;
    if (rp) {
      const row = document.createElement("tr");
      row.dataset.server = rp.name;
      row.className = `comfy-cluster-server comfy-cluster-runpod state-${rp.state}`;
      row.title = rp.blocked_reason || rp.last_error || "RunPod serverless";
      cell(row, rp.name, "name");
      cell(row, rp.state, "state");
      cell(row, `${rp.in_flight}/${rp.max_concurrent}`, "queue");
      cell(row, "serverless", "gpu");
      cell(row, seconds(rp.seconds_per_job), "spj");
      table.appendChild(row);
      const w = rp.workers || {};
      const details = document.createElement("p");
      details.className = "comfy-cluster-runpod-details";
      details.style.fontSize = "12px";
      details.textContent =
        `RunPod workers: ${w.running || 0} running, ${w.idle || 0} idle, min ${rp.workers_min ?? "?"}` +
        ` / max ${rp.workers_max ?? "?"}. Spent today: $${Number(rp.spend_today || 0).toFixed(4)}` +
        (rp.blocked_reason ? `. Not taking work: ${rp.blocked_reason}` : "");
      root.appendChild(table);
      root.appendChild(details);
    } else {
      root.appendChild(table);
    }
  }
  el.appendChild(root);
}

function onStatus(event) {
  cluster.snapshot = event.detail;
  renderTab();
}

app.registerExtension({
  name: "comfy_cluster.ui",
  async setup() {
    // Listen before the server's first push: unknown message types are dropped.
    api.addEventListener(STATUS_EVENT, onStatus);
    app.extensionManager.registerSidebarTab({
      id: "comfy-cluster",
      icon: "pi pi-server",
      title: "Cluster",
      tooltip: "comfy-cluster servers and RunPod",
      type: "custom",
      render(el) {
        cluster.tabElement = el;
        renderTab();
        getJson("/comfy_cluster/status").then((snap) => {
          cluster.snapshot = snap;
          renderTab();
        });
      },
      destroy() {
        cluster.tabElement = null;
      },
    });
    addButton().catch((err) => toast("error", "comfy-cluster", `top-bar button: ${err}`));
  },
});
