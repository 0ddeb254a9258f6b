"""Job specs: every shipped example parses; malformed specs are rejected naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raytron.cluster import PythonJobSpec, SpecError, available_kinds, load_spec, parse_spec
from raytron.cluster.spec import apply_overrides

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


def good() -> dict:
    return {
        "name": "ok",
        "kind": "python",
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 0},
        "runtime": {"env": {"A": "1"}},
        "storage": {"path": "/tmp/runs"},
        "python": {"function": "pkg.mod:main", "kwargs": {"x": 1, "y": [1, "a"], "z": {"k": None}}},
    }


def with_(path: str, value) -> dict:
    data = good()
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return data


def without(path: str) -> dict:
    data = good()
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    del node[last]
    return data


def test_examples_exist():
    assert EXAMPLES, "the repo ships example specs"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_spec_parses(path):
    spec = load_spec(path)
    assert spec.kind in available_kinds()
    assert spec.name


def test_valid_spec_round_trips_through_json():
    spec = parse_spec(good())
    assert isinstance(spec, PythonJobSpec)
    assert spec.resources.total_cpus == 1.0
    again = parse_spec(json.loads(spec.to_json()))
    assert again == spec


def test_int_is_accepted_where_a_number_is_expected():
    spec = parse_spec(with_("resources.cpus_per_worker", 2))
    assert spec.resources.cpus_per_worker == 2.0


MALFORMED = [
    # (case id, data, field path named in the message, words the message must contain)
    ("unknown-top-level-key", with_("priority", 3), "priority", "unknown key"),
    ("unknown-nested-key-with-suggestion", with_("resources.num_worker", 2), "resources.num_worker", "did you mean `num_workers`"),
    ("missing-name", without("name"), "name", "required"),
    ("missing-kind", without("kind"), "kind", "required"),
    ("unknown-kind", with_("kind", "pyhton"), "kind", "allowed: python"),
    ("kind-not-string", with_("kind", 3), "kind", "must be a string"),
    ("missing-body", without("python"), "python", "required"),
    ("workers-zero", with_("resources.num_workers", 0), "resources.num_workers", "greater than or equal to 1"),
    ("workers-string", with_("resources.num_workers", "two"), "resources.num_workers", "integer"),
    ("workers-bool", with_("resources.num_workers", True), "resources.num_workers", "integer"),
    ("workers-float", with_("resources.num_workers", 1.5), "resources.num_workers", "integer"),
    ("cpus-negative", with_("resources.cpus_per_worker", -1), "resources.cpus_per_worker", "greater than 0"),
    ("gpus-fraction-above-one", with_("resources.gpus_per_worker", 1.5), "resources.gpus_per_worker", "whole gpus"),
    ("name-uppercase", with_("name", "My Job"), "name", "lowercase"),
    ("name-too-long", with_("name", "a" * 49), "name", "48"),
    ("env-not-string", with_("runtime.env", {"N": 3}), "runtime.env.N", "string"),
    ("env-bad-name", with_("runtime.env", {"1BAD": "x"}), "runtime.env", "must match"),
    ("env-reserved", with_("runtime.env", {"RAYTRON_SPEC_JSON": "x"}), "runtime.env", "reserved"),
    ("working-dir-missing", with_("runtime.working_dir", "/definitely/not/here"), "runtime.working_dir", "does not exist"),
    ("storage-empty", with_("storage.path", " "), "storage.path", "non-empty"),
    ("function-no-colon", with_("python.function", "pkg.mod.main"), "python.function", "module:function"),
    ("kwargs-not-json", with_("python.kwargs", {"when": float("nan")}), "python.kwargs.when", "JSON"),
    ("resources-not-mapping", with_("resources", [1, 2]), "resources", "mapping"),
]


@pytest.mark.parametrize("data,path,words", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_spec_names_the_field(data, path, words):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    message = str(info.value)
    assert path in info.value.paths, message
    assert f"`{path}`" in message
    assert words.lower() in message.lower(), message
    assert "nothing was submitted" in message


def test_every_problem_is_reported_at_once():
    data = with_("resources.num_workers", 0)
    data["resources"]["cpus_per_worker"] = "lots"
    data["extra"] = 1
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert set(info.value.paths) == {"resources.num_workers", "resources.cpus_per_worker", "extra"}


def test_top_level_must_be_a_mapping_and_not_empty():
    for data in (None, [1, 2], "text"):
        with pytest.raises(SpecError):
            parse_spec(data)


def test_yaml_errors_and_duplicate_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\nkind: python\n  oops: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nkind: python\nname: b\npython: {function: 'm:f'}\n")
    with pytest.raises(SpecError, match="duplicate key 'name'"):
        load_spec(dup)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(good()))
    spec = load_spec(path, ["resources.num_workers=3", "python.kwargs.x=[1, 2]", "runtime.env.B=x"])
    assert spec.resources.num_workers == 3
    assert spec.python.kwargs["x"] == [1, 2]
    assert spec.runtime.env == {"A": "1", "B": "x"}
    with pytest.raises(SpecError) as info:
        load_spec(path, ["resources.num_workers=-2"])
    assert "resources.num_workers" in info.value.paths
    assert "(set by --set)" in str(info.value)
    with pytest.raises(SpecError, match="key.path=value"):
        load_spec(path, ["resources.num_workers"])
    with pytest.raises(SpecError, match="needs `name` to be a mapping"):
        load_spec(path, ["name.first=x"])


def test_exponent_numbers_are_floats_in_files_and_overrides(tmp_path):
    """PyYAML's YAML 1.1 reads `1e-4` as a string; a spec means a number."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(good()).replace("kwargs:", "kwargs:\n    lr: 1e-4\n    big: 3E5\n    dotted: 1.0e4\n    word: e5\n    version: '1e3'", 1))
    spec = load_spec(path, ["python.kwargs.space=[1e-4, 2.5e-1, -1e+2]"])
    assert spec.python.kwargs["lr"] == 1e-4 and spec.python.kwargs["big"] == 3e5 and spec.python.kwargs["dotted"] == 1e4
    assert spec.python.kwargs["space"] == [1e-4, 0.25, -100.0]
    assert spec.python.kwargs["word"] == "e5" and spec.python.kwargs["version"] == "1e3"  # quoted stays a string


def test_overrides_do_not_mutate_the_input():
    data = good()
    new, touched = apply_overrides(data, ["resources.num_workers=9"])
    assert data["resources"]["num_workers"] == 2
    assert new["resources"]["num_workers"] == 9
    assert touched == {"resources.num_workers"}


def test_relative_paths_resolve_against_the_spec_file(tmp_path):
    (tmp_path / "code").mkdir()
    data = with_("runtime.working_dir", "code")
    data["storage"]["path"] = "runs"
    path = tmp_path / "sub.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    assert spec.runtime.working_dir == str(tmp_path / "code")
    assert spec.storage.path == str(tmp_path / "runs")


def test_home_and_uri_storage_paths_are_left_for_the_cluster():
    assert parse_spec(with_("storage.path", "~/runs")).storage.path == "~/runs"
    assert parse_spec(with_("storage.path", "s3://bucket/runs")).storage.path == "s3://bucket/runs"


def test_spec_error_survives_pickling():
    import pickle

    with pytest.raises(SpecError) as info:
        parse_spec(with_("resources.num_workers", 0), source="spec job.yaml")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)
    assert again.paths == info.value.paths
    assert "spec job.yaml" in str(again)
