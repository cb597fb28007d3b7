"""report.html: a self-contained page whose tables say what metrics.json says, whose pictures
are real PNGs embedded in the page, and which survives images gone from disk."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from refad.errors import CheckpointError
from refad.metrics import METRIC_NAMES, image_curves, operating_point
from refad.reporting.evaluation import evaluate
from refad.reporting.report import build_report
from refad.reporting.report.page import SECTIONS
from refad.reporting.report.tiles import display_size
from refad.reporting.tables import DECISION_LABELS, percent, ratio

SECTION_IDS = ["summary", "config", "data", "metrics", "decisions", "curves", "histograms",
               "gallery", "loss"]
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}
PNG_URI = "data:image/png;base64,"


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]


class TreeParser(HTMLParser):
    """A small DOM from the stdlib parser; refuses mismatched end tags (broken markup)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self.stack[-1].tag != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse(text: str) -> Node:
    parser = TreeParser()
    parser.feed(text)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [parser.root], [n.tag for n in parser.stack]
    return parser.root


def section(root: Node, sid: str) -> Node:
    found = root.find_all("section", id=sid)
    assert len(found) == 1, sid
    return found[0]


def table_rows(node: Node, name: str) -> list[list[str]]:
    """The body rows of the table named `name`, as cell texts."""
    tables = node.find_all("table", data_table=name)
    assert len(tables) == 1, name
    body = tables[0].find_all("tbody")[0]
    return [[c.all_text().strip() for c in tr.children if c.tag in ("td", "th")]
            for tr in body.find_all("tr")]


def table_head(node: Node, name: str) -> list[str]:
    thead = node.find_all("table", data_table=name)[0].find_all("thead")[0]
    return [c.all_text().strip() for c in thead.find_all("th")]


def decode_png(src: str) -> Image.Image:
    assert src.startswith(PNG_URI), src[:60]
    data = base64.b64decode(src[len(PNG_URI):], validate=True)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def evaluated_copy(trained_run: Path, where: Path) -> Path:
    """A private copy of the session's trained run, evaluated (other tests share the run)."""
    run = where / "run"
    shutil.copytree(trained_run, run)
    evaluate(run, "cpu", progress=False)
    return run


@pytest.fixture(scope="module")
def report(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):
    run = evaluated_copy(trained_run, tmp_path_factory.mktemp("report"))
    path = build_report(run, "cpu")
    metrics = json.loads((run / "metrics.json").read_text())
    rows = json.loads((run / "test_scores.json").read_text())["images"]
    text = path.read_text()
    return run, path, text, parse(text), metrics, rows


def test_report_is_written_into_the_run_folder(report) -> None:
    run, path, text, _, _, _ = report
    assert path == run / "report.html" and path.is_file()
    assert text.startswith("<!DOCTYPE html>")
    assert not list(run.glob(".report.html.*"))  # the atomic write left no temporary file


def test_sections_in_order_with_headings(report) -> None:
    _, _, _, root, _, _ = report
    sections = [n for n in root.walk() if n.tag == "section"]
    assert [s.attrs.get("id") for s in sections] == SECTION_IDS
    assert [sid for sid, _ in SECTIONS] == SECTION_IDS
    for node in sections:
        assert node.children[0].tag == "h2" and node.children[0].all_text().strip()
    toc = [a.attrs["href"] for a in root.find_all("nav")[0].find_all("a")]
    assert toc == [f"#{sid}" for sid in SECTION_IDS]


def test_every_picture_is_an_embedded_png(report) -> None:
    _, _, _, root, _, _ = report
    images = root.find_all("img")
    assert len(images) > 10
    for img in images:
        decoded = decode_png(img.attrs["src"])
        assert decoded.size[0] > 0 and decoded.size[1] > 0
    gallery = section(root, "gallery").find_all("img")
    assert gallery and all(max(decode_png(i.attrs["src"]).size) <= 256 for i in gallery)


def test_nothing_is_fetched_from_outside(report) -> None:
    _, _, _, root, _, _ = report
    for node in root.walk():
        for name in ("src", "href", "action", "poster", "data"):
            value = node.attrs.get(name)
            if value is None:
                continue
            assert value.startswith((PNG_URI, "#")), f"<{node.tag} {name}={value[:80]!r}>"
    assert not root.find_all("script") and not root.find_all("link")
    styles = " ".join(n.all_text() for n in root.find_all("style"))
    assert styles and not re.search(r"url\(|@import|https?:|file:", styles)


def test_summary_names_the_run(report) -> None:
    run, _, _, root, metrics, _ = report
    text = section(root, "summary").all_text()
    for value in (metrics["method"], metrics["backbone"], f"{metrics['image_size']} px",
                  run.name, percent(metrics["mean"]["i_auroc"]),
                  percent(metrics["mean"]["p_auroc"]),
                  percent(metrics["decisions"]["mean"]["false_alarm_rate"]),
                  percent(metrics["decisions"]["mean"]["miss_rate"])):
        assert str(value) in text, value
    import refad
    assert refad.__version__ in text


def test_config_is_the_runs_config(report) -> None:
    run, _, _, root, _, _ = report
    details = section(root, "config").find_all("details")
    assert details and "open" in details[0].attrs
    shown = json.loads(details[0].find_all("pre")[0].all_text())
    from refad.runs import RunDir
    assert shown == RunDir(run).read_config().model_dump(mode="json")


def test_data_counts_images_and_defects(report) -> None:
    run, _, _, root, _, rows = report
    body = section(root, "data")
    table = {r[0]: r for r in table_rows(body, "data")}
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    calibration = checkpoint["calibration"]
    assert set(table) == {"fabric", "mesh", "screw"}
    for cat, cells in table.items():
        mine = [r for r in rows if r["category"] == cat]
        assert cells[1] == str(sum(r["label"] == 0 for r in mine))
        assert cells[2] == str(sum(r["label"] == 1 for r in mine))
        for defect in {r["defect"] for r in mine if r["label"] == 1}:
            n = sum(r["defect"] == defect for r in mine)
            assert f"{defect} ({n})" in cells[3]
        assert cells[4] == str(calibration["categories"][cat]["images"])
    assert calibration["source"] in body.all_text()


def test_metrics_table_equals_metrics_json(report) -> None:
    _, _, _, root, metrics, _ = report
    body = section(root, "metrics")
    rows = table_rows(body, "metrics")
    expected = [[c] + [percent(m[n]) for n in METRIC_NAMES]
                for c, m in metrics["categories"].items()]
    expected.append(["mean"] + [percent(metrics["mean"][n]) for n in METRIC_NAMES])
    assert rows == expected
    assert len(rows) == len(metrics["categories"]) + 1


def test_decision_counts_equal_metrics_json(report) -> None:
    _, _, _, root, metrics, _ = report
    body = section(root, "decisions")
    head = table_head(body, "decisions")
    rows = {r[0]: dict(zip(head, r, strict=True)) for r in table_rows(body, "decisions")}
    decided = metrics["decisions"]["categories"]
    assert set(rows) == set(decided) | {"mean"}
    for cat, d in decided.items():
        for key in ("tp", "fp", "tn", "fn"):
            assert rows[cat][key.upper()] == str(d[key]), (cat, key)
        for key, label in DECISION_LABELS.items():
            assert rows[cat][label] == percent(d[key]), (cat, key)
    for key, label in DECISION_LABELS.items():
        assert rows["mean"][label] == percent(metrics["decisions"]["mean"][key])
    assert "train-normal" in body.all_text()  # the caption says which images calibrated


def test_curves_and_histograms_per_category(report) -> None:
    _, _, _, root, metrics, _ = report
    for sid in ("curves", "histograms"):
        blocks = section(root, sid).find_all("div", **{"class": "category"})
        assert [b.attrs["data-category"] for b in blocks] == list(metrics["categories"])
        assert all(len(b.find_all("img")) == 1 for b in blocks)


def test_gallery_has_a_part_per_category(report) -> None:
    _, _, _, root, metrics, rows = report
    body = section(root, "gallery")
    parts = {n.attrs["data-category"]: n for n in body.find_all("div")
             if "data-category" in n.attrs}
    assert list(parts) == list(metrics["categories"])
    for cat, part in parts.items():
        threshold = metrics["decisions"]["categories"][cat]["threshold"]
        mine = [r for r in rows if r["category"] == cat]
        misses = [r for r in mine if r["label"] == 1 and r["score"] <= threshold]
        alarms = [r for r in mine if r["label"] == 0 and r["score"] > threshold]
        hits = [r for r in mine if r["label"] == 1 and r["score"] > threshold]
        entries = part.find_all("figure", **{"class": "entry"})
        assert len(entries) == sum(min(3, len(k)) for k in (misses, alarms, hits))
        nones = sum(1 for p in part.find_all("p") if p.attrs.get("class") == "none")
        assert nones == sum(not k for k in (misses, alarms, hits))
        # worst misses first: the lowest-scored unflagged defective image leads
        if misses:
            first = entries[0].find_all("b")[0].attrs["title"]
            assert first == min(misses, key=lambda r: r["score"])["image"]
        for entry in entries:
            tiles = entry.find_all("div", **{"class": "tile"})
            assert len(tiles) == 4
            assert len(entry.find_all("img")) >= 3  # image, overlay, predicted mask (+ truth)


def test_loss_section_has_a_curve(report) -> None:
    run, _, _, root, _, _ = report
    body = section(root, "loss")
    assert len(body.find_all("img")) == 1
    history = json.loads((run / "checkpoint.json").read_text())["history"]
    rows = table_rows(body, "loss")
    assert rows[0][:2] == ["unified", str(len(history))]


def test_without_refad_test_it_says_what_to_run(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("metrics.json", "test_scores.json", "metrics.md"):
        (run / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="refad test"):
        build_report(run, "cpu")
    assert not (run / "report.html").exists()


@pytest.mark.parametrize("edit, expected", [
    (lambda rows: rows.__setitem__(0, {}), r"images\[0\]\.category: Field required"),
    (lambda rows: rows[1].pop("score"), r"images\[1\]\.score: Field required"),
    (lambda rows: rows[2].__setitem__("score", "high"), r"images\[2\]\.score: Input should"),
    (lambda rows: rows[0].__setitem__("label", 7), r"images\[0\]\.label: Input should"),
])
def test_an_edited_test_scores_file_names_the_row_and_field(
    trained_run: Path, tmp_path: Path, edit, expected: str
) -> None:
    run = evaluated_copy(trained_run, tmp_path)
    rows = json.loads((run / "test_scores.json").read_text())["images"]
    edit(rows)
    (run / "test_scores.json").write_text(json.dumps({"images": rows}))
    with pytest.raises(CheckpointError, match=f"test_scores.json: {expected}"):
        build_report(run, "cpu")


def test_a_metrics_file_that_is_not_an_object_is_blamed(trained_run: Path, tmp_path: Path) -> None:
    run = evaluated_copy(trained_run, tmp_path)
    (run / "metrics.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"metrics.json: not written by refad test"):
        build_report(run, "cpu")


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["categories"]["fabric"].__setitem__("i_auroc", "high"),
     r"categories\.fabric\.i_auroc: Input should be a valid number"),
    (lambda m: m.__setitem__("categories", [1]), r"categories: Input should be a valid dict"),
    (lambda m: m["categories"].__setitem__("fabric", None), r"categories\.fabric: Input should"),
    (lambda m: m.__setitem__("decisions", "x"), r"decisions: Input should"),
    (lambda m: m["decisions"]["categories"]["fabric"].__setitem__("tp", [1]),
     r"decisions\.categories\.fabric\.tp: Input should be a valid integer"),
    (lambda m: m.clear(), r"method: Field required"),  # {} made an empty, complete-looking page
])
def test_an_edited_metrics_file_names_the_field(
    trained_run: Path, tmp_path: Path, edit, expected: str
) -> None:
    run = evaluated_copy(trained_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    edit(metrics)
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(CheckpointError, match=f"metrics.json: {expected}"):
        build_report(run, "cpu")
    assert not (run / "report.html").exists()


def test_scores_and_metrics_of_two_evaluations_are_not_reported_as_one(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`refad test` writes test_scores.json, then metrics.json: a full disk between them left
    the new scores beside the old metrics, and the report drew from the mixed pair."""
    import refad.runs.rundir
    from refad.errors import RefadError
    from refad.runs import open_run

    run = evaluated_copy(trained_run, tmp_path)
    one = open_run(run, "cpu").config.data.model_copy(update={"categories": ["fabric"]})
    real = refad.runs.rundir.write_json

    def full_disk_at_metrics(path: Path, data) -> None:
        if path.name == "metrics.json":
            raise RefadError(f"{path}: cannot write (No space left on device)")
        real(path, data)

    monkeypatch.setattr(refad.runs.rundir, "write_json", full_disk_at_metrics)
    with pytest.raises(RefadError, match="No space left"):
        evaluate(run, "cpu", one, progress=False)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="test_scores.json: not the one metrics.json was"):
        build_report(run, "cpu")
    evaluate(run, "cpu", one, progress=False)  # a complete `refad test` mends it
    assert build_report(run, "cpu").is_file()


def test_metrics_of_a_model_the_run_has_trained_past_are_not_reported(
    trained_run: Path, tmp_path: Path
) -> None:
    """Tested at epoch 3, resumed to 40, reported: metrics of the epoch-3 model beside the
    gallery and loss of the epoch-40 one, exit 0. The evaluation records the models it scored;
    here its record is set back to what an earlier epoch's test would have written."""
    run = evaluated_copy(trained_run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    recorded = metrics["checkpoints"]["unified"]
    assert recorded["epoch"] == 2 and len(recorded["model_sha256"]) == 64
    metrics["checkpoints"]["unified"] = {"epoch": 1, "model_sha256": "0" * 64}
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(CheckpointError, match=r"metrics.json: computed on epoch 1 of 'unified', "
                                              r"whose checkpoint is now epoch 2"):
        build_report(run, "cpu")
    evaluate(run, "cpu", progress=False)  # a new `refad test` mends it
    assert build_report(run, "cpu").is_file()


def test_an_unfinished_training_is_said_in_the_metrics(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["epochs"] = 40  # as the manifest of a run stopped at epoch 2 of 40 reads
    (run / "checkpoint.json").write_text(json.dumps(meta))
    notes = evaluate(run, "cpu", progress=False)["notes"]
    assert "unified: training stopped at epoch 2 of 40" in " ".join(notes)


def test_a_category_the_run_never_saw_is_noted(trained_run: Path, tmp_path: Path) -> None:
    """`refad test --root` with a new product: scored at the global threshold and averaged into
    the mean without a word."""
    from refad.runs import open_run

    config = open_run(trained_run, "cpu").config
    root = tmp_path / "data"
    shutil.copytree(config.data.root, root)
    shutil.copytree(root / "fabric", root / "bolt")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = config.data.model_copy(update={"root": str(root)})
    notes = " ".join(evaluate(run, "cpu", data, progress=False)["notes"])
    assert "bolt: not among the run's training categories" in notes
    assert "fabric: not among" not in notes
    # its report: the gallery scored it as refad test decided it (at the global threshold);
    # asking for it by name had stopped the whole report
    root_node = parse(build_report(run, "cpu").read_text())
    bolt = [n for n in section(root_node, "gallery").find_all("div")
            if n.attrs.get("data-category") == "bolt"][0]
    assert bolt.find_all("figure", **{"class": "entry"})
    assert not bolt.find_all("p", **{"class": "failure"})
    caption = section(root_node, "decisions").all_text()
    assert "the global one where a category has none of its own" in caption


def test_a_gallery_image_gone_from_disk_is_a_line_not_a_crash(
    trained_run: Path, tmp_path: Path
) -> None:
    run = evaluated_copy(trained_run, tmp_path)
    rows = json.loads((run / "test_scores.json").read_text())["images"]
    # with 3 defective images and 3 of each kind, every defective image is in the gallery
    defective = [r for r in rows if r["category"] == "fabric" and r["label"] == 1]
    gone, broken = Path(defective[0]["image"]), Path(defective[1]["image"])
    data_root = gone.parents[3]
    copied = tmp_path / "data"
    shutil.copytree(data_root, copied)  # the session's dataset is shared: damage a copy
    for row in rows:
        row["image"] = str(copied / Path(row["image"]).relative_to(data_root))
        if row["mask"]:
            row["mask"] = str(copied / Path(row["mask"]).relative_to(data_root))
    (run / "test_scores.json").write_text(json.dumps({"images": rows}))
    gone, broken = (copied / p.relative_to(data_root) for p in (gone, broken))
    gone.unlink()
    broken.write_bytes(b"not an image at all")

    text = build_report(run, "cpu", gallery_size=3).read_text()
    failures = [p.all_text() for p in parse(text).find_all("p", **{"class": "failure"})]
    assert any(str(gone) in f and "not found" in f for f in failures), failures
    assert any(str(broken) in f and "not an image" in f for f in failures), failures
    fabric = [n for n in section(parse(text), "gallery").find_all("div")
              if n.attrs.get("data-category") == "fabric"][0]
    assert fabric.find_all("figure", **{"class": "entry"})  # the other images still shown


def test_a_relative_data_root_is_found_from_any_working_directory(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_scores.json kept the paths as given: with a relative --root, `refad report` run
    from another directory called every gallery image moved or deleted."""
    from refad.runs import open_run

    config = open_run(trained_run, "cpu").config
    shutil.copytree(config.data.root, tmp_path / "data")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.chdir(tmp_path)
    evaluate(run, "cpu", config.data.model_copy(update={"root": "data"}), progress=False)
    rows = json.loads((run / "test_scores.json").read_text())["images"]
    assert all(Path(r["image"]).is_absolute() for r in rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = build_report(run, "cpu").read_text()
    assert not parse(text).find_all("p", **{"class": "failure"})


def test_an_uncalibrated_run_says_so_in_data_and_gallery(trained_run: Path, tmp_path: Path) -> None:
    """Without calibration the page said thresholds were set on normal images, and that the
    heatmaps used the calibrated range while each was stretched to its own."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["calibration"] = None
    (run / "checkpoint.json").write_text(json.dumps(meta))
    evaluate(run, "cpu", progress=False)
    root_node = parse(build_report(run, "cpu").read_text())
    data = section(root_node, "data").all_text()
    assert "not calibrated" in data and "Thresholds were set on normal images" not in data
    assert "No calibrated colour range" in section(root_node, "gallery").all_text()


def test_the_summary_names_the_evaluated_epoch(report) -> None:
    run, _, _, root, metrics, _ = report
    (unit,) = metrics["checkpoints"].values()
    epochs = json.loads((run / "config.json").read_text())["train"]["epochs"]
    assert f"epoch {unit['epoch']} of {epochs}" in section(root, "summary").all_text()


def test_one_epoch_of_loss_has_one_integer_tick() -> None:
    from refad.reporting.report.figures import loss_figure

    ax = loss_figure([{"epoch": 1, "loss": 0.5}]).axes[0]
    assert list(ax.get_xticks()) == [1]


def test_curves_group_tied_scores_like_sklearn() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    labels = (rng.random(60) < 0.4).astype(int)
    curves = image_curves(scores, labels)
    assert curves is not None
    assert math.isclose(curves.auroc, roc_auc_score(labels, scores), rel_tol=1e-12)
    assert math.isclose(curves.ap, average_precision_score(labels, scores), rel_tol=1e-12)
    assert len(curves.fpr) == len(np.unique(scores)) + 1  # one point per distinct score
    t = 2.0
    point = operating_point(scores, labels, t)
    assert math.isclose(point.tpr, ((scores > t) & (labels == 1)).sum() / labels.sum())
    assert any(math.isclose(point.fpr, f) and math.isclose(point.tpr, r)
               for f, r in zip(curves.fpr, curves.tpr, strict=True))
    assert image_curves([1.0, 2.0], [1, 1]) is None


def test_curve_areas_equal_metrics_json(report) -> None:
    _, _, _, _, metrics, rows = report
    for cat, m in metrics["categories"].items():
        mine = [r for r in rows if r["category"] == cat]
        curves = image_curves([r["score"] for r in mine], [r["label"] for r in mine])
        assert math.isclose(curves.auroc, m["i_auroc"], abs_tol=1e-9)
        assert math.isclose(curves.ap, m["i_ap"], abs_tol=1e-9)


def test_pictures_are_shrunk_to_256_px() -> None:
    assert display_size(1024, 512) == (256, 128)
    assert display_size(300, 900) == (85, 256)
    assert display_size(64, 48) == (64, 48)  # never enlarged


def test_histogram_draws_a_category_without_a_threshold() -> None:
    """A run stopped before calibration has scores but no threshold; its report still builds."""
    from refad.reporting.report.figures import histogram_figure
    from refad.reporting.report.views import CategoryView

    rows = [{"score": s, "label": lab} for s, lab in ((1.0, 0), (2.0, 0), (3.0, 1), (5.0, 1))]
    fig = histogram_figure(CategoryView("pcb", rows, None))
    (ax,) = fig.axes
    low, high = ax.get_xlim()
    assert low <= 1.0 and high >= 5.0 and not ax.get_lines()  # no threshold line drawn


def test_a_caption_never_shows_a_score_equal_to_the_threshold_it_passed() -> None:
    """At 4 significant digits a score just above the threshold read 'score 14.49 above
    threshold 14.49'."""
    from refad.reporting.report.gallery import _caption

    row = {"image": "/d/fabric/test/hole/000.png", "defect": "hole", "score": 14.4912}
    text = _caption(row, 14.4901)
    assert "score 14.4912 above threshold 14.4901" in text
    assert "score 14.49 at or below threshold 15.2" in _caption({**row, "score": 14.49}, 15.2)


def test_summary_cards_say_when_a_mean_covers_fewer_categories(report) -> None:
    """'mean I-AUROC 93.8 %' was a mean over 2 of 4 categories with nothing said on the card."""
    from refad.reporting.report.sections import summary_section
    from refad.runs import open_run

    run, _, _, _, metrics, _ = report
    total = len(metrics["categories"])
    fewer = {**metrics, "mean_categories": {**metrics["mean_categories"], "i_auroc": total - 1}}
    text = parse(summary_section(fewer, open_run(run, "cpu"))).all_text()
    assert f"mean over {total - 1} of {total} categories" in text
    assert text.count("mean over") == 1  # P-AUROC covers them all: nothing to say


def test_segf1_and_area_ratio_equal_metrics_json(report) -> None:
    _, _, _, root, metrics, _ = report
    body = section(root, "decisions")
    head = table_head(body, "decisions")
    assert head[-2:] == ["SegF1", "area ratio"]
    rows = {r[0]: dict(zip(head, r, strict=True)) for r in table_rows(body, "decisions")}
    decided = {**metrics["decisions"]["categories"], "mean": metrics["decisions"]["mean"]}
    for cat, d in decided.items():
        assert rows[cat]["SegF1"] == percent(d["seg_f1"]), cat
        assert rows[cat]["area ratio"] == ratio(d["area_ratio"]), cat
