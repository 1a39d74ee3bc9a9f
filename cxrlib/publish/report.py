"""The audit as files: ``audit.json`` (every figure) and ``audit.html`` (self-contained, figures inline)."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from cxrlib.artifacts import write_json
from cxrlib.publish.audit import Release

CAVEAT = ("A low linkage score from one re-identification model is evidence, not proof, of anonymity: "
          "another model, more data or side information may link what this one does not.")

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1020px;margin:2em auto;padding:0 1em;
color:#1d232a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #dde;padding-bottom:.2em}
.caveat{background:#fff6e0;border-left:4px solid #e0a000;padding:.7em 1em;margin:1em 0}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{flex:1 1 150px;border:1px solid #dde;border-radius:6px;padding:.6em .9em;background:#fafbfd}
.card .v{font-size:1.6em;font-weight:600} .card .k{color:#556;font-size:.85em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} td,th{border:1px solid #dde;padding:.25em .6em;text-align:left}
th{background:#f0f2f6} .muted{color:#667;font-size:.9em} img{max-width:100%}
ul.attrs{columns:3;font-size:.9em;padding-left:1.2em} ul.attrs li{break-inside:avoid}
"""


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _distance_figure(result: dict) -> str:
    import matplotlib.pyplot as plt

    nn = result["nearest_neighbour"]
    d = np.asarray(nn["distance"])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(0, max(d.max(), 1e-6) * 1.05, 40)
    if "same_patient" in nn:
        # None: one of the two images carries no patient id
        same = np.array([v is True for v in nn["same_patient"]])
        other = np.array([v is False for v in nn["same_patient"]])
        ax.hist(d[same], bins=bins, alpha=.7, label=f"same patient ({same.sum()})", color="#c0392b")
        ax.hist(d[other], bins=bins, alpha=.7, label=f"another patient ({other.sum()})", color="#2e86c1")
        unknown = ~(same | other)
        if unknown.any():
            ax.hist(d[unknown], bins=bins, alpha=.7, label=f"patient id missing ({unknown.sum()})", color="#999")
        ax.legend(frameon=False)
    else:
        ax.hist(d, bins=bins, color="#2e86c1")
    ax.set_xlabel("distance to the nearest other image (embedding)")
    ax.set_ylabel("images")
    ax.spines[["top", "right"]].set_visible(False)
    return _figure_png(fig)


def _roc_figure(roc: dict) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(roc["fpr"], roc["tpr"], color="#c0392b", label=f"AUC {roc['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", color="#999")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(frameon=False, loc="lower right")
    ax.set_title("same patient? (image pairs)", fontsize=10)
    return _figure_png(fig)


def _pairs_figure(release: Release, result: dict, count: int = 6) -> str:
    """The closest pairs: each image beside its nearest neighbour, coloured when the ids are known."""
    import matplotlib.pyplot as plt

    nn = result["nearest_neighbour"]
    order, seen = [], set()
    for i in np.argsort(nn["distance"]):  # mutual nearest neighbours would show the same pair twice
        pair = frozenset((int(i), int(nn["index"][i])))
        if pair not in seen:
            seen.add(pair)
            order.append(int(i))
        if len(order) == count:
            break
    fig, axes = plt.subplots(2, len(order), figsize=(1.7 * len(order), 3.9), squeeze=False)
    for column, i in enumerate(order):
        j = nn["index"][i]
        same = nn.get("same_patient", [None] * len(order))[i] if "same_patient" in nn else None
        colour = {True: "#c0392b", False: "#2e86c1", None: "#555"}[same]
        for row, k in enumerate((i, j)):
            ax = axes[row, column]
            ax.imshow(release.images.pixels[k], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(colour), spine.set_linewidth(3)
            ax.set_xlabel(Path(release.images.names[k]).name[-22:], fontsize=7)
        axes[0, column].set_title(f"d = {nn['distance'][i]:.3f}" + {True: "\nsame patient", False: "\nother patient",
                                                                   None: ""}[same], fontsize=8, color=colour)
    return _figure_png(fig)


def _cards(result: dict) -> list[tuple[str, str]]:
    cards = [(f"{result['images']}", "images audited")]
    worst = result.get("verdict", {}).get("headline")
    if worst:
        where = {"internal": "within the release", "against": "in the other set"}.get(worst["scope"], worst["scope"])
        name = result.get("attack_panel", {}).get("attack_names", {}).get(worst["attack"], worst["attack"])
        cards.append((f"{worst['precision_at_1']:.1%}", f"worst-case P@1: {name}, {where}; chance "
                                                         f"{worst['chance']:.1%}"))
    if "retrieval" in result:
        r = result["retrieval"]
        cards += [(f"{r['precision_at_1']:.1%}", "network P@1: nearest image is the same patient"),
                  (f"{r['map_at_r']:.3f}", "mAP@R: how completely a patient's other images come first (1: all)"),
                  (f"{r['r_precision']:.3f}", "R-precision: share of the same patient among the R nearest"),
                  (f"{result['patients_relinked']:.1%}", f"of {result['patients_with_followups']} patients with "
                                                          "follow-ups re-linked")]
    if "against" in result and "top1" in result["against"]:
        cards.append((f"{result['against']['top1']:.1%}", "linkage attack: top-1 match in the other set"))
    elif "against" in result:
        cards.append(("not scored", "linkage attack: patient ids not compared (see below)"))
    if "retrieval" not in result:
        cards.append(("not scored", "linkage inside the release (see below)"))
    if result.get("files_without_patient_id"):
        cards.append((str(len(result["files_without_patient_id"])), "files without a patient id (left out of "
                                                                    "the id-based figures)"))
    cards.append((str(result["burned_in_text"]["images_with_text"]), "images with suspected burned-in text"))
    cards.append((str(len(result["near_duplicates"])), "near-duplicate pairs"))
    return cards


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _without_ids(names: list[str], where: str) -> str:
    """The files without a patient id, by name (the id-based figures leave them out)."""
    if not names:
        return ""
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return (f"<p class='muted'>{len(names)} file(s) of {where} carry no patient id and are left out of the "
            f"id-based figures: {html.escape(shown)}.</p>")


def read_this_first(result: dict) -> str:
    """The first box's text, following the verdict (never "a low score" when the score is high)."""
    v = result.get("verdict", {})
    if v.get("verdict") == "linkable":
        return ("This release is linkable: at least one attack of the panel re-identifies patients well above "
                "chance (the verdict above names it). Do not publish it as anonymous; a stronger method or fewer "
                "images per patient is needed, and another attack may link still more.")
    if v.get("verdict") == "no linkage found":
        return (f"No attack of the panel of {len(v.get('attacks', []))} linked patients beyond the verdict's margin "
                "of chance. " + CAVEAT)
    return ("Linkage was not scored: without patient ids the audit cannot measure re-identification, only "
            "distances. " + CAVEAT)


def _verdict_box(result: dict) -> str:
    v = result.get("verdict")
    if not v:
        return ""
    colour = {"linkable": "#c0392b", "no linkage found": "#1e8449"}.get(v["verdict"], "#777")
    return (f"<div class='caveat' style='border-left-color:{colour}'><b>Verdict: {html.escape(v['verdict'])}.</b> "
            f"{html.escape(_sentence(v.get('reason', v['text'])))}<br><span class='muted'>Scale: {html.escape(v['scale'])}.</span></div>")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _panel_table(panel: dict, names: dict) -> str:
    chance = panel["chance"]
    rows = []
    for kind, f in panel["attacks"].items():
        p1 = f"{f['precision_at_1']:.1%} ({f['precision_at_1_ci'][0]:.1%}-{f['precision_at_1_ci'][1]:.1%})"
        auc = f"{f['auc']:.3f} ({f['auc_ci'][0]:.3f}-{f['auc_ci'][1]:.3f})" if f.get("auc") == f.get("auc") else "-"
        rows.append((names.get(kind, kind), p1, f"{chance['precision_at_1']:.1%}",
                     f"{f['map_at_r']:.3f}" if "map_at_r" in f else "-",
                     f"{f['r_precision']:.3f}" if "r_precision" in f else "-", auc, "0.5"))
    return _table(rows, ("attack", "P@1 (95 % CI)", "P@1 chance", "mAP@R", "R-precision", "AUC (95 % CI)",
                         "AUC chance"))


def _panel_section(result: dict) -> list[str]:
    panel = result.get("attack_panel")
    if not panel:
        return []
    parts = ["<h2>Linkage attacks: the panel</h2>",
             "<p class='muted'>Every attack is run; the verdict reads the strongest (the worst case). "
             + " &middot; ".join(html.escape(v) for v in panel["labels"].values()) + "</p>"]
    for scope, title in (("internal", "within the release"), ("against", "against the other set")):
        if scope in panel:
            p = panel[scope]
            parts.append(f"<h3>{title}: {p['queries']} queries, gallery of {p['gallery']} images</h3>")
            parts.append(_panel_table(p, panel["attack_names"]))
    for scope, pairs in result.get("most_linked_pairs", {}).items():
        parts.append(f"<h3>Most linked pairs ({html.escape(scope)}, attack "
                     f"{html.escape(panel['attack_names'].get(pairs['attack'], pairs['attack']))})</h3>")
        parts.append(_table([(r["image"], r["nearest"], f"{r['distance']:.4f}",
                              {True: "yes", False: "no", None: "unknown"}[r["same_patient"]])
                             for r in pairs["pairs"]], ("image", "nearest", "distance", "same patient")))
    return parts


def render_html(result: dict, release: Release) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>cxrlib audit</title><style>{_STYLE}</style>"
             "</head><body>", "<h1>Re-identification risk audit</h1>",
             f"<p class='muted'>{html.escape(result['folder'])} &middot; model {html.escape(result.get('model', ''))}"
             f" &middot; {result['seconds']:.1f} s</p>", _verdict_box(result),
             f"<div class='caveat'><b>Read this first.</b> {html.escape(read_this_first(result))}</div>",
             "<div class='cards'>" + "".join(f"<div class='card'><div class='v'>{html.escape(v)}</div>"
                                             f"<div class='k'>{html.escape(k)}</div></div>"
                                             for v, k in _cards(result)) + "</div>"]
    if result.get("manifests_in_release"):
        parts.append("<div class='caveat'><b>Do not publish this folder as it is.</b> It holds manifests of "
                     "<code>cxrlib anonymize</code> (" + html.escape(", ".join(result["manifests_in_release"]))
                     + "), which map every output to its input and hold the raw inputs' SHA-256; move them out "
                     "of the folder.</div>")
    parts.append("<h2>Linkage inside the release</h2>")
    if "retrieval" in result:
        r = result["retrieval"]
        parts.append(f"<p>Each image with a patient id was queried against the others with the re-identification "
                     f"network. For {r['precision_at_1']:.1%} of the images whose patient has another image here, "
                     f"the nearest image shows the same patient (P@1); mAP@R {r['map_at_r']:.3f}, R-precision "
                     f"{r['r_precision']:.3f}. Patient ids came from the files.</p>")
    else:
        parts.append(f"<p>Linkage is not scored: {html.escape(result['linkage_not_scored'])}. The distances below "
                     "show how close images lie, and the suspected clusters list images the network puts "
                     "together.</p>")
    parts.append(_without_ids(result.get("files_without_patient_id", []), "this folder"))
    parts += _panel_section(result)
    parts.append(f"<img alt='nearest-neighbour distances' src='{_distance_figure(result)}'>")
    if result.get("roc"):
        parts.append(f"<img alt='ROC' src='{_roc_figure(result['roc'])}'>")
    parts.append("<h2>Closest pairs</h2><p class='muted'>Top row: an image; bottom row: its nearest other image. "
                 "Red: same patient, blue: another patient (when ids are known).</p>")
    parts.append(f"<img alt='closest pairs' src='{_pairs_figure(release, result)}'>")
    clusters = result["suspected_clusters"]
    parts.append(f"<h2>Suspected same-patient clusters</h2><p>{clusters['count']} groups of images closer than "
                 f"{clusters['link_distance']:.3f} to each other ({html.escape(clusters['chosen'])}).</p>")
    if clusters["clusters"]:
        parts.append(_table([(len(c), ", ".join(c[:12]) + (" ..." if len(c) > 12 else ""))
                             for c in clusters["clusters"][:50]], ("images", "files")))
    if "against" in result:
        a = result["against"]
        parts.append(f"<h2>Linkage attack against {html.escape(a['folder'])}</h2>")
        if "top1" in a:
            top = [k for k in a if k.startswith("top") and k != "top1"]
            parts.append(f"<p>Of {a['queries_with_patient_in_other']} release images whose patient is in the other "
                         f"set, {a['top1']:.1%} have an image of that patient as their nearest match"
                         + (f" and {a[top[0]]:.1%} among the {top[0][3:]} nearest" if top else "") + ".</p>")
        else:
            parts.append(f"<p><b>Patient ids not compared</b>: {html.escape(a['linkage_not_scored'])}. Only "
                         "distances were computed.</p>")
        parts.append(_without_ids(a.get("files_without_patient_id", []), "the other set"))
    parts.append("<h2>Headers</h2>")
    if "headers" in result:
        h = result["headers"]
        parts.append(f"<p>{h['files']} DICOM files; {h['files_without_identity_removed']} without "
                     f"PatientIdentityRemoved = YES; {h['files_with_private_tags']} with private tags. "
                     "BurnedInAnnotation: " + html.escape(", ".join(f"{v} in {n} files" for v, n in h["burned_in_annotation"].items()))
                     + ".</p>")
        present = h["table_e1_1_present"]
        parts.append(f"<p>{len(present)} attributes of PS3.15 Table E.1-1 still carry a value (files):</p>"
                     "<ul class='attrs'>" + "".join(f"<li>{html.escape(k)} <span class='muted'>{v}</span></li>"
                                                    for k, v in present.items()) + "</ul>"
                     if present else "<p>No Table E.1-1 attribute carries a value.</p>")
    else:
        parts.append("<p>PNG files: no header to check.</p>")
    bt = result["burned_in_text"]
    parts.append(f"<h2>Pixels</h2><p>Suspected burned-in text in {bt['images_with_text']} images "
                 f"({bt['regions']} regions). Near-duplicate image pairs: {len(result['near_duplicates'])}.</p>")
    if bt.get("files"):
        parts.append("<p>Files with suspected burned-in text:</p>" + _table([(n,) for n in bt["files"]], ("file",)))
    if result["near_duplicates"]:
        parts.append(_table([tuple(n for n in p) for p in result["near_duplicates"]],
                            ("image", "near-duplicate of")))
    if result["unreadable"]:
        parts.append("<h2>Files not audited</h2>" + _table(result["unreadable"][:20], ("file", "why")))
    parts.append(f"<p class='muted'>{html.escape(CAVEAT)}</p></body></html>")
    return "\n".join(parts)


def write_report(result: dict, release: Release, out_dir: str | Path) -> tuple[Path, Path]:
    """``audit.json`` and ``audit.html`` in ``out_dir`` (written atomically)."""
    out_dir = Path(out_dir)
    # the verdict first: a reader of the JSON sees it before any figure
    ordered = {"verdict": result.get("verdict"), "read_this_first": read_this_first(result), **result}
    json_path = write_json(out_dir / "audit.json", {**ordered, "caveat": CAVEAT}, sort_keys=False)
    html_path = out_dir / "audit.html"
    tmp = html_path.with_name(html_path.name + ".partial")
    tmp.write_text(render_html(result, release))
    os.replace(tmp, html_path)
    return json_path, html_path
