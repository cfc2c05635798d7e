"""Each knob, option and request shape has one declaration that every surface derives from (issue 19 item 5)."""

from __future__ import annotations

from typing import Any

import pytest
from _demo import FACE, FACES
from hypothesis import given, settings
from hypothesis import strategies as st

from instantid.api.face_detail import FaceDetailOptions, make_detail_options
from instantid.api.identity import MIX_WEIGHT_HELP, MIX_WEIGHT_RANGE, check_mix_weight
from instantid.api.settings import GenerationSettings, field_label, make_settings
from instantid.api.validation import field_at, rule
from instantid.apps.swap import SwapOptions, make_swap_options
from instantid.cli import main
from instantid.errors import InvalidInputError
from instantid.service.settings import ServerSettings


def test_face_detail_strength_is_one_declaration() -> None:
    setting = GenerationSettings.model_fields["face_detail_strength"]
    option = FaceDetailOptions.model_fields["strength"]
    assert (setting.default, setting.description, setting.metadata) == (option.default, option.description,
                                                                         option.metadata)


def test_the_mix_weight_range_and_words_come_from_its_declaration() -> None:
    from instantid.cli.options import MIX_HELP, parse_mix
    from instantid.service.openapi import json_schema, multipart_schema

    low, high = MIX_WEIGHT_RANGE
    weight = json_schema("generate")["properties"]["mix"]["anyOf"][0]["items"]["properties"]["weight"]
    form = multipart_schema("swap")["properties"]["mix_weight"]
    assert (weight["minimum"], weight["maximum"]) == (form["items"]["minimum"], form["items"]["maximum"]) == (low, high)
    assert weight["description"] == MIX_WEIGHT_HELP and MIX_WEIGHT_HELP in form["description"]
    assert MIX_WEIGHT_HELP[1:].rstrip(".") in MIX_HELP
    for bad in (low - 0.01, high + 0.01):
        with pytest.raises(InvalidInputError, match=f"^--mix weight must be between {low} and {high}"):
            parse_mix(f"b.jpg:{bad}")
        with pytest.raises(InvalidInputError, match=f"^mix weight must be between {low} and {high}"):
            check_mix_weight(bad)
    assert parse_mix(f"b.jpg:{high}")[1] == high


def _ranged(model: Any) -> list[str]:
    return [name for name, info in model.model_fields.items() if rule(info) and "between" in rule(info)]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_out_of_range_value_is_one_line_from_its_declaration(data: st.DataObject) -> None:
    """One phrasing for every declared model: the range stated is the field's own, the name is the surface's."""
    model, make = data.draw(st.sampled_from([(GenerationSettings, make_settings), (SwapOptions, make_swap_options),
                                             (FaceDetailOptions, make_detail_options)]))
    name = data.draw(st.sampled_from(_ranged(model)))
    info = field_at(model, (name,))
    high = next(m.le for m in info.metadata if hasattr(m, "le"))
    value = high + data.draw(st.integers(1, 1000)) * 8  # a multiple of 8 when the field wants one
    with pytest.raises(InvalidInputError) as raised:
        make({**({"width": 64, "height": 64} if name in ("width", "height") else {}), name: value}, field_label)
    assert str(raised.value) == f"{field_label(name)} must be {rule(info)}, got {value}"


def test_serve_flags_are_the_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ServerSettings field is a `serve` flag (none typed twice), and the flags build the settings."""
    import uvicorn

    import instantid.cli.service as service_cli
    import instantid.service.server as server
    from instantid.cli.service import serve_command

    assert set(ServerSettings.model_fields) <= set(serve_command.__signature__.parameters)  # type: ignore[attr-defined]
    built: list[ServerSettings] = []
    monkeypatch.setattr(service_cli, "load_model", lambda settings: None)
    monkeypatch.setattr(server, "create_app", lambda settings, model=None: built.append(settings))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    assert main(["serve", "--port", "0", "--max-upload-mb", "0.5", "--no-ui", "--cors-origin", "https://a.example",
                 "--cors-origin", "https://b.example", "--wait-timeout-s", "7", "--out", "jobs-here"]) == 0
    (made,) = built
    assert made.max_upload_bytes == 2**19 and not made.mount_ui and made.wait_timeout_s == 7
    assert made.cors_origins == ["https://a.example", "https://b.example"] and str(made.out_dir) == "jobs-here"
    assert main(["serve", "--port", "0", "--max-queued-jobs", "0"]) == 2  # the declared range, one line


def test_the_cli_refuses_what_a_group_picture_cannot_use_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--demo", "--person", str(FACE), "--person", str(FACES / "obama_1.jpg"),
                 "--face-detail"])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("error: --face-detail is not used by --person: the face-detail pass "
                                               "is not available for group pictures")


def test_the_demo_pairs_with_one_face_model_everywhere() -> None:
    from instantid.faces import DEMO_BACKEND, SPACE_DLIB

    assert DEMO_BACKEND == "dlib"
    # The server of the many-machine setup analyses uploads with the face model its demo workers use.
    assert ServerSettings(demo=True, face_backend="antelopev2").face_analyzer().space == SPACE_DLIB
