"""Nothing changes behind the user's back: the UI's Few-step toggle without a few-step model, --face-detail that
finds no face (the demo), Ctrl-C in a batch."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _demo import FACE

from instantid.cli import main


def test_few_step_toggle_says_when_no_few_step_model_is_loaded() -> None:
    from instantid.speed.presets import get_preset
    from instantid.webui import UIContext
    from instantid.webui.portrait import PortraitTab
    from instantid.webui.who import WhoPanel

    plain = SimpleNamespace(preset=None, lora=None, demo=False)
    ctx = UIContext(get_model=lambda: plain, out_dir=Path("."), submit=lambda *a: None)
    tab = PortraitTab(ctx, WhoPanel(ctx))
    info, *values = tab.few_step(True)
    assert info["info"].startswith("Warning: no few-step model is loaded") and values[1] == get_preset("lcm-lora").steps
    assert tab.few_step(False)[0]["info"] == ctx.few_step_info(), "off: the plain explanation again"
    lightning = get_preset("lightning-4step")
    ctx.get_model = lambda: SimpleNamespace(preset=lightning, lora=None, demo=False, preset_defaults=lambda: {
        "steps": lightning.steps, "guidance_scale": lightning.guidance_scale})
    assert tab.few_step(True)[0]["info"] == ctx.few_step_info(), "a preset is loaded: nothing to warn about"


@pytest.mark.usefixtures("demo_loads")
def test_face_detail_that_finds_no_face_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(FACE), "-p", "x", "--steps", "1", "--seed", "2", "--face-detail", "-o",
                 str(tmp_path)]) == 0
    assert ("--face-detail: no face found in x_s2.png (the demo's images are noise, with no face to find), so it "
            "was not redrawn") in capsys.readouterr().err


def test_ctrl_c_in_a_batch_exits_130_and_says_how_to_resume(demo_loads: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.csv"
    job.write_text(f"identity,photos,prompt,seed\nme,{FACE},one,1\nme,{FACE},two,2\nme,{FACE},three,3\n")
    generate = demo_loads.generate
    calls: list[int] = []

    def interrupted_at_the_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    args = ["batch", str(job), "--steps", "1", "-o", str(tmp_path / "out")]
    monkeypatch.setattr(demo_loads, "generate", interrupted_at_the_second)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert ("interrupted after 1 of 3 image(s); rerun the same command to resume (the images made are kept)"
            in err) and "Traceback" not in err
    monkeypatch.setattr(demo_loads, "generate", generate)
    assert main(args) == 0
    assert "3 outputs, 1 already done, 2 to generate" in capsys.readouterr().out
