"""Job files without a model: names, encodings, the YAML/JSON/CSV grammar and its one-line errors, the task grid
and its digests (the runs themselves are tests/test_batch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from instantid.api.settings import GenerationSettings
from instantid.apps.batch import load_job, plan, task_digest
from instantid.apps.batch_file import SETTING_NAMES, BatchTask, Failure, IdentitySpec, PromptSpec, read_text
from instantid.errors import InvalidInputError
from instantid.io.outputs import slug


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(InvalidInputError) as caught:
        load_job(path)
    return str(caught.value)


def test_slugs_are_short_safe_and_never_empty() -> None:
    assert slug("A Knight, in ARMOUR!") == "a-knight-in-armour"
    assert slug("word " * 20) == "word-word-word-word-word-word-word-word"  # 40 chars, no trailing '-'
    assert slug("abcdef", limit=3) == "abc" and slug("") == "no-prompt" and slug("!!!") == "no-prompt"


def test_job_file_encodings(tmp_path: Path) -> None:
    text = "prompt,identity\ncafé,x\n"
    for encoded in (text.encode("utf-16"), text.encode("utf-16-be").join([b"\xfe\xff", b""]),
                    b"\xef\xbb\xbf" + text.encode(), text.encode("cp1252")):
        (tmp_path / "f.csv").write_bytes(encoded)
        assert read_text(tmp_path / "f.csv").lstrip("\ufeff") == text
    (tmp_path / "bad.csv").write_bytes(b"caf\x81\x8d")
    with pytest.raises(InvalidInputError,
                       match=r"is not text in UTF-8 or Windows-1252 \(a binary file\?\); save it as UTF-8"):
        read_text(tmp_path / "bad.csv")


def test_yaml_grid_order_names_and_photo_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, "job.yaml", "identities:\n  - {name: ann, photos: a.jpg}\n  - {name: bob, photos: "
                  "[b1.jpg, null, ~/b2.jpg]}\nprompts: [one, {prompt: two, style: Watercolor, negative_prompt: x,"
                  " steps: 3}]\nseeds: [7, 8]\nsettings: {guidance_scale: 4}\n")
    job = load_job(path)
    assert job.settings == {"guidance_scale": 4} and job.problems == []
    assert [(t.identity.name, t.prompt_number, t.seed) for t in job.tasks] == [
        (n, p, s) for n in ("ann", "bob") for p in (1, 2) for s in (7, 8)]
    assert job.tasks[0].where == "identity ann, prompt 1, seed 7"
    ann, bob = job.tasks[0].identity, job.tasks[-1].identity
    assert ann.photos == ((tmp_path / "a.jpg").resolve(),)
    assert bob.photos == ((tmp_path / "b1.jpg").resolve(), Path("~/b2.jpg").expanduser().resolve())
    two = job.tasks[2].prompt
    assert two == PromptSpec("two", "Watercolor", "x", (("steps", 3),))
    assert load_job(_write(tmp_path, "j.json", '{"identities": [{"name": "a", "photos": ["p.jpg"]}], '
                                               '"prompts": ["x"]}')).tasks[0].seed == 0  # default seeds: [0]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("j.yaml", "identities: [\n", "is not valid YAML: "),
        ("j.json", "{nope", "is not valid JSON: "),
        ("j.yaml", "- a list\n", "must hold a mapping with identities, prompts and seeds"),
        ("j.yaml", "prompts: [a]\nzeta: 1\nalpha: 2\n", "unknown key(s) alpha, zeta"),
        ("j.yaml", "identities: [{name: a, photos: p}]\nprompts: [a]\nseeds: [1, -1]\n",
         "seeds must be a list of non-negative integers"),
        ("j.yaml", "identities: [{name: a, photos: p}]\nprompts: [a]\nseeds: [true]\n", "seeds must be a list"),
        ("j.yaml", "identities: [{name: a, photos: p}]\nprompts: [a]\nseeds: []\n", "seeds must be a list"),
        ("j.yaml", "identities: [{name: a, photos: p}]\nprompts: [a]\nseeds: 3\n", "seeds must be a list"),
        ("j.yaml", "identities: [{name: a, photos: p}]\nprompts: [a]\nsettings: [1]\n", "settings must be a mapping"),
        ("j.yaml", "identities: [{name: a, photos: p}]\nprompts: [a]\nsettings: {cfg: 1, seed: 2}\n",
         f"settings: unknown setting(s) cfg, seed; known: {', '.join(SETTING_NAMES)}"),
        ("j.yaml", "identities: []\nprompts: [a]\n", "'identities' must be a non-empty list"),
        ("j.yaml", "identities: [{name: a, photos: p}]\n", "'prompts' must be a non-empty list"),
        ("j.yaml", "identities: [{name: a, photos: p}, {name: a, photos: q}]\nprompts: [a]\n",
         "identity name 'a' is used twice; names are folder names"),
    ],
)
def test_file_wide_problems_are_one_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    error = _error(_write(tmp_path, name, text))
    assert message in error and str(tmp_path / name) in error and "\n" not in error


def test_bad_rows_are_listed_with_where_they_are(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, "j.yaml", "identities:\n  - {name: ok, photos: p.jpg}\n  - {name: Bad Name, "
                          "photos: p.jpg}\n  - {name: nophotos, photos: []}\n  - just-a-string\nprompts:\n  - fine\n"
                          "  - {prompt: x, colour: red}\n  - 5\n"))
    assert [str(p) for p in job.problems] == [
        "identity 2: identity name 'Bad Name' must use only letters, digits and '-'",
        "identity 3: identity nophotos has no photos",
        "identity 4: each identity needs a name and photos, got 'just-a-string'",
        "prompt 2: unknown key(s) colour",
        "prompt 3: a prompt is a string or a mapping with 'prompt', got 5",
    ]
    assert [(t.identity.name, t.prompt_number) for t in job.tasks] == [("ok", 1)]
    assert job.problems[0].to_dict() == {"where": "identity 2", "error": job.problems[0].error, "output": None}


def test_csv_rows_header_spelling_settings_and_bad_cells(tmp_path: Path) -> None:
    path = _write(tmp_path, "j.csv", " Identity ,PHOTOS,prompt,seed,Steps,style\n"
                  "ann,a.jpg; b.jpg,a cat,3,,\n,,,,,\nann,a.jpg,a dog,,12,Watercolor\nbob,b.jpg,a cat,x,,\n"
                  "Bad Name,c.jpg,a cat,1,,\nbob,,a cat,1,,\n")
    job = load_job(path)
    assert [(t.identity.name, t.prompt_number, t.prompt.prompt, t.seed, t.where) for t in job.tasks] == [
        ("ann", 1, "a cat", 3, "line 2"), ("ann", 2, "a dog", 0, "line 4")]
    assert job.tasks[0].identity.photos == ((tmp_path / "a.jpg").resolve(), (tmp_path / "b.jpg").resolve())
    assert job.tasks[1].prompt == PromptSpec("a dog", "Watercolor", None, (("steps", "12"),))
    assert [str(p) for p in job.problems] == [
        "line 5: seed must be a non-negative integer, got 'x'",
        "line 6: identity name 'Bad Name' must use only letters, digits and '-'",
        "line 7: identity bob has no photos",
    ]
    assert "CSV needs the column(s) photos, prompt" in _error(_write(tmp_path, "h.csv", "identity,seed\na,1\n"))
    assert "header: unknown setting(s) cfg" in _error(_write(tmp_path, "u.csv", "identity,photos,prompt,cfg\n"))
    assert "no rows" in _error(_write(tmp_path, "e.csv", "identity,photos,prompt\n,,\n"))
    assert "not found" in _error(tmp_path / "missing.yaml")


def test_task_names_and_digests(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"one")
    task = BatchTask(IdentitySpec("ann", (photo,)), 7, PromptSpec("A cat!", "Watercolor"), 42, "line 2")
    assert task.stem == "007-a-cat_s42" and task.output(tmp_path) == tmp_path / "ann" / "007-a-cat_s42.png"
    assert task.label == "ann\nA cat! [Watercolor]\nseed 42"
    plain = BatchTask(task.identity, 1, PromptSpec("x"), 1, "w")
    assert plain.label == "ann\nx\nseed 1"
    settings = GenerationSettings(steps=3)
    digest = task_digest(task, settings, {"base": "b"})
    assert len(digest) == 16 and digest == task_digest(task, settings, {"base": "b"})
    assert digest != task_digest(task, settings.updated(steps=4), {"base": "b"})
    assert digest != task_digest(task, settings, {"base": "c"})
    missing = BatchTask(IdentitySpec("ann", (tmp_path / "gone.jpg",)), 7, task.prompt, 42, "w")
    assert task_digest(missing, settings, {}) != task_digest(task, settings, {})  # a missing photo is a value too
    assert str(Failure("line 3", "bad")) == "line 3: bad"


def test_plan_applies_precedence_and_lists_bad_settings(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, "j.yaml", "identities: [{name: a, photos: p.jpg}]\nprompts:\n  - {prompt: x, "
                          "steps: 7}\n  - {prompt: y, steps: 0}\n  - z\nsettings: {steps: 5, guidance_scale: 2}\n"))
    (tmp_path / "p.jpg").write_bytes(b"photo")  # a missing photo would make every row a bad row
    planned, problems = plan(job, GenerationSettings(guidance_scale=9.0), {"guidance_scale"}, {}, tmp_path)
    assert [(p.task.prompt.prompt, p.settings.steps, p.settings.guidance_scale) for p in planned] == [
        ("x", 7, 9.0), ("z", 5, 9.0)]
    assert [p.where for p in problems] == ["identity a, prompt 2, seed 0"]
    assert "'steps' must be between 1 and 200, got 0" in problems[0].error
    assert problems[0].output == str(tmp_path / "a" / "002-y_s0.png")


def test_an_output_is_done_only_with_its_sidecar_and_the_same_digest(tmp_path: Path) -> None:
    from instantid.apps.batch import PlannedTask, is_done

    task = BatchTask(IdentitySpec("ann", ()), 1, PromptSpec("x"), 3, "w")
    planned = PlannedTask(task, GenerationSettings(), "abc")
    png = task.output(tmp_path)
    assert not is_done(planned, tmp_path)
    png.parent.mkdir(parents=True)
    png.write_bytes(b"png")
    assert not is_done(planned, tmp_path)  # no sidecar yet: unfinished
    for sidecar, done in [('{"batch_digest": "abc"}', True), ('{"batch_digest": "abd"}', False), ("[1]", False),
                          ("{broken", False), ("{}", False)]:
        png.with_suffix(".json").write_text(sidecar, encoding="utf-8")
        assert is_done(planned, tmp_path) is done, sidecar


def test_model_files_fingerprint_local_files_and_folders_only(tmp_path: Path) -> None:
    import os

    from instantid.apps.batch import model_files

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"12345")
    (tmp_path / "base" / "unet").mkdir(parents=True)
    (tmp_path / "base" / "unet" / "w.bin").write_bytes(b"123")
    (tmp_path / "base" / "model_index.json").write_bytes(b"{}")
    os.utime(lora, ns=(1, 2))
    found = model_files({"lora": str(lora), "base": str(tmp_path / "base"), "adapter": "InstantX/InstantID",
                         "identitynet": None, "demo": False, "missing": str(tmp_path / "gone")})
    assert list(found) == ["base", "lora"]
    assert found["lora"] == [["style.safetensors", 5, 2]]
    assert [entry[:2] for entry in found["base"]] == [["model_index.json", 2], ["unet/w.bin", 3]]
    assert model_files({"lora": "~/" + "no-such-file-here"}) == {}


def test_grammar_edges_that_mutation_testing_found(tmp_path: Path) -> None:
    assert slug("!a b!") == "a-b"
    # JSON is parsed as JSON (its own error), not as YAML.
    assert "is not valid JSON: Expecting property name enclosed in double quotes" in _error(
        _write(tmp_path, "j.json", "{nope"))
    job = load_job(_write(tmp_path, "j.yaml", "identities:\n  - {name: a, photos: p.jpg}\n  - {name: b}\n"
                          "  - {photos: p.jpg}\n  - {name: " + "n" * 81 + ", photos: p.jpg}\n  - {name: " + "m" * 80
                          + ", photos: p.jpg}\nprompts:\n  - {prompt: x, colour: red, size: 2}\n  - y\n"))
    assert job.path == tmp_path / "j.yaml"
    assert [str(p) for p in job.problems] == [
        "identity 2: each identity needs a name and photos, got {'name': 'b'}",
        "identity 3: each identity needs a name and photos, got {'photos': 'p.jpg'}",
        f"identity 4: identity name '{'n' * 81}' must use only letters, digits and '-'",
        "prompt 1: unknown key(s) colour, size",
    ]
    assert {t.identity.name for t in job.tasks} == {"a", "m" * 80}  # 80 characters is the longest name
    csv_path = tmp_path / "j.csv"
    csv_path.write_bytes(b'identity,photos,prompt,negative_prompt\r\na,p.jpg,"two\r\nlines",blurry\r\n')
    csv_job = load_job(csv_path)
    assert csv_job.path == csv_path and csv_job.tasks[0].prompt.prompt == "two\r\nlines"  # quoted newline kept
    assert csv_job.tasks[0].prompt.negative_prompt == "blurry"
    assert f"job file {tmp_path / 'u.csv'} header: unknown setting(s) cfg" in _error(
        _write(tmp_path, "u.csv", "identity,photos,prompt,cfg\n"))


def test_task_settings_take_the_rows_prompt_and_seed_and_one_image(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, "j.yaml", "identities: [{name: a, photos: p.jpg}]\nprompts: [a cat]\n"
                          "seeds: [11]\n"))
    (tmp_path / "p.jpg").write_bytes(b"photo")
    (planned,), _ = plan(job, GenerationSettings(num_images=3, prompt="ignored", seed=5), {"num_images", "seed"},
                         {}, tmp_path)
    assert (planned.settings.prompt, planned.settings.seed, planned.settings.num_images) == ("a cat", 11, 1)
    assert planned.digest == task_digest(planned.task, planned.settings, {})


def test_digests_are_stable_and_see_photos_models_and_paths(tmp_path: Path) -> None:
    one, two = tmp_path / "one.jpg", tmp_path / "two.jpg"
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    settings = GenerationSettings()
    task = BatchTask(IdentitySpec("ann", (one,)), 1, PromptSpec("x"), 1, "w")
    other = BatchTask(IdentitySpec("ann", (two,)), 1, PromptSpec("x"), 1, "w")
    assert task_digest(task, settings, {}) != task_digest(other, settings, {})  # each photo's own contents
    assert task_digest(task, settings, {"a": 1, "b": 2}) == task_digest(task, settings, {"b": 2, "a": 1})
    assert task_digest(task, settings, {"base": tmp_path}) == task_digest(task, settings, {"base": str(tmp_path)})
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"v1")
    job = load_job(_write(tmp_path, "j.yaml", f"identities: [{{name: a, photos: {one}}}]\nprompts: [x]\n"))
    before = plan(job, settings, set(), {"lora": str(lora)}, tmp_path)[0][0].digest
    assert len(before) == 16 and before != plan(job, settings, set(), {"lora": "other"}, tmp_path)[0][0].digest
    lora.write_bytes(b"v2, retrained")
    assert plan(job, settings, set(), {"lora": str(lora)}, tmp_path)[0][0].digest != before
