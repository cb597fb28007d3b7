"""The Python API refuses bad arguments in one line, before any work (refad.config.arguments).

Each case here raised a raw TypeError/ValueError/AttributeError from deep inside, or (a batch
size of -1, a category string) silently did something else than asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config

from refad import api
from refad.errors import ConfigError


@pytest.mark.parametrize("call, expected", [
    (lambda r, o: api.predict(r, [o], o / "p", batch_size=-1),  # scored nothing, said nothing
     r"batch_size: must be at least 1, got -1"),
    (lambda r, o: api.predict(r, [o], o / "p", batch_size=0), r"batch_size: must be at least 1"),
    (lambda r, o: api.predict(r, [o], o / "p", batch_size=True),
     r"predict: batch_size: Input should be a valid integer \(got bool\)"),
    (lambda r, o: api.predict(r, [o], o / "p", batch_size=2.5), r"predict: batch_size: "),
    (lambda r, o: api.predict(r, str(o), o / "p"),  # iterated as one path per character
     r"predict: inputs: 'str' instances are not allowed as a Sequence"),
    (lambda r, o: api.predict(None, [o], o / "p"), r"predict: run_dir: "),
    (lambda r, o: api.predict(r, [o], o / "p", colour="red"),
     r"predict: got an unexpected keyword argument 'colour'"),
    (lambda r, o: api.evaluate(r, batch_size=0, progress=False),
     r"batch_size: must be at least 1, got 0"),
    (lambda r, o: api.evaluate(r, data="mvtec"), r"evaluate: data: "),
    (lambda r, o: api.build_report(r, gallery_size="x"), r"build_report: gallery_size: "),
    (lambda r, o: api.build_report(r, gallery_size=-1), r"gallery_size: must be at least 1"),
    (lambda r, o: api.scorer(r, unit=None), r"scorer: unit: Input should be a valid string"),
    (lambda r, o: api.build_config(categories="pcb"),  # was ['p', 'c', 'b']
     r"build_config: categories: 'str' instances are not allowed"),
    (lambda r, o: api.build_config(overrides=[5]),
     r"build_config: overrides\[0\]: Input should be a valid string \(got int\)"),
    (lambda r, o: api.fit("a config", o / "f"), r"fit: config: "),
    (lambda r, o: api.compare(["rlr"], {"bogus": 1}, o / "c"),
     r"compare: base: 'bogus' is not an argument of build_config"),
    (lambda r, o: api.open_run(None), r"open_run: run_dir: "),
    # its decorator had moved onto a helper written above it
    (lambda r, o: api.run_demo(o / "d", epochs="many"), r"run_demo: epochs: "),
])
def test_bad_api_arguments_are_one_line_config_errors(
    trained_run: Path, tmp_path: Path, call, expected: str
) -> None:
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=expected) as info:
        call(trained_run, tmp_path)
    assert "\n" not in str(info.value)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_good_arguments_are_converted_as_the_hints_say(
    trained_run: Path, demo_root: Path, tmp_path: Path
) -> None:
    """A str where a Path is hinted, a tuple of inputs and a dict config all still work."""
    image = demo_root / "fabric" / "test" / "good" / "000.png"
    report = api.predict(str(trained_run), (str(image),), str(tmp_path / "p"), batch_size=1)
    assert len(report.predictions) == 1 and report.failures == []
    config = tiny_config(demo_root, epochs=1)
    assert isinstance(api.build_config(categories=["fabric"]), api.RunConfig)
    api.fit(config.model_dump(), str(tmp_path / "run"), progress=False)
    assert api.RunDir(tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("table", "result", "problem"),
    [
        (api.markdown_table, {}, "'categories' missing"),
        (api.markdown_table, [], "a list, not a dict"),
        (api.markdown_table, {"categories": {"pcb": {"i_auroc": 0.5}}, "mean": {}}, "'pcb' lacks"),
        (api.decisions_table, "metrics.json", "a str, not a dict"),
        (api.decisions_table, {"decisions": {"rule": "x", "mean": {}}}, "decisions.categories"),
        (api.decisions_table,
         {"decisions": {"rule": "x", "mean": {}, "categories": {"pcb": {"tp": 1, "fp": 0,
                                                                       "tn": 1, "fn": "?"}}}},
         "decisions.categories.pcb: fn missing or not a count"),
    ],
)
def test_tables_name_what_a_result_lacks(table, result, problem) -> None:
    """The table helpers are public: a dict that is not an evaluation result was a KeyError
    from inside the table (`api.markdown_table({})`)."""
    with pytest.raises(ConfigError, match="result: .*" + problem.replace("?", r"\?")) as info:
        table(result)
    assert "\n" not in str(info.value) and table.__name__ in str(info.value)


def test_decisions_table_of_an_uncalibrated_category_shows_na() -> None:
    counts = {"tp": 3, "fp": 1, "tn": 4, "fn": 2, "threshold": None}
    decisions = {"rule": "x", "mean": {}, "categories": {"pcb": counts}}
    text = api.decisions_table({"decisions": decisions})
    assert "| pcb | n/a |" in text and "| 1 / 5 | 2 / 5 |" in text
