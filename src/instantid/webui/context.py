"""What every tab of the web UI shares: the model getter, the outputs folder, the submit hook and the caller."""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantid.api.settings import SCHEDULERS, GenerationSettings
from instantid.errors import InstantIDError
from instantid.internal_errors import report
from instantid.io.outputs import prepare_folder
from instantid.webui.references import IdentityCache

if TYPE_CHECKING:
    import gradio as gr

    from instantid.api.generator import GenerationResult, InstantID
    from instantid.apps.tasks import Prepared

log = logging.getLogger("instantid.webui")

Progress = Callable[[int, int], None] | None
# Runs one job of any tab: the default runs it on the model here; the server passes one that goes through its
# job queue (same store, limits, job folders and metadata as its HTTP jobs).
Submit = Callable[["Prepared", GenerationSettings, Progress], "GenerationResult"]



@dataclass(frozen=True)
class Caller:
    """Who clicked: the name signed in with (a server with API keys: the key's name; else None) and the browser's
    address. Set for the duration of a job handler (:meth:`UIContext.guard` with ``job=True``), so a server's
    ``submit`` hook counts the job against that key (:func:`current_caller`)."""

    user: str | None
    client: str


_CALLER: ContextVar[Caller | None] = ContextVar("instantid_ui_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the job handler running in this thread, or None outside one."""
    return _CALLER.get()


@contextmanager
def calling_as(caller: Caller) -> Iterator[None]:
    """Run the block as ``caller`` (what the job handlers do with gradio's request; tests call tabs this way)."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


DEMO_NOTICE = (
    "**Demo mode:** tiny random weights, no download. The pipeline runs for real, but the images are noise. "
    "Start it again without `--demo` (real weights) for actual portraits."  # `instantid ui` or `serve`
)
# Bundled with the source tree (examples/face.jpg); an installed wheel has none and shows no examples.
EXAMPLE_PHOTO = Path(__file__).resolve().parents[3] / "examples" / "face.jpg"
TABS_WITHOUT_WHO = ("group",)
# The few-step toggle uses this preset's published sampler, steps and guidance (instantid.speed.presets).
FEW_STEP_PRESET = "lcm-lora"


def prepare_out_dir(out_dir: str | Path | None, label: str = "outputs folder") -> Path:
    """The folder results are saved in (created and checked now, see :func:`instantid.io.outputs.prepare_folder`),
    or a fresh temporary folder when none is given."""
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="instantid-ui-"))
    return prepare_folder(Path(out_dir).expanduser().resolve(), label)


@dataclass
class UIContext:
    """What every tab shares: the model, the identity cache, the outputs folder and the generation hook."""

    get_model: Callable[[], InstantID]
    out_dir: Path
    submit: Submit | None = None  # None: run each job on the model here (under its lock)
    generation_concurrency: int | None = 1  # gradio's limit; None when ``submit`` queues on its own
    example_photo: Path | None = EXAMPLE_PHOTO
    demo_notice: str = DEMO_NOTICE
    keep_s: float | None = None  # results older than this are deleted (under `serve`: --keep-hours); None: kept
    identities: IdentityCache = field(init=False)
    tabs: dict[str, Any] = field(init=False, default_factory=dict)  # filled by create_ui: key -> tab

    def __post_init__(self) -> None:
        self.identities = IdentityCache(self.get_model)
        if self.submit is None:
            self.submit = self.run_here

    def run_here(self, job: Prepared, settings: GenerationSettings, progress: Progress) -> GenerationResult:
        """The standalone UI's ``submit``: the job on this process's model."""
        return job.run(self.get_model(), settings, progress)

    def demo(self) -> bool:
        return bool(getattr(self.get_model(), "demo", False))

    def prune(self, now: float | None = None) -> int:
        """Delete the results (PNG and JSON) older than ``keep_s`` from the outputs folder; how many files. The
        server runs it with its job cleanup, so a result shown in the UI lives as long as a job's images."""
        if self.keep_s is None:
            return 0
        cutoff = (now if now is not None else time.time()) - self.keep_s
        removed = 0
        for path in self.out_dir.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # removed meanwhile (another cleaner): nothing left to do
                continue
        return removed

    def few_step(self) -> dict[str, Any]:
        """What the few-step toggle sets. With a preset loaded (``--preset``): the model's own sampler (which is
        the preset's) and the preset's steps and guidance; otherwise the LCM-LoRA preset's sampler, steps and
        guidance (it needs that LoRA: ``--preset lcm-lora`` or ``--lora``). The controls stay visible and
        editable; the toggle holds no hidden state."""
        from instantid.speed.presets import get_preset

        model = self.get_model()
        if getattr(model, "preset", None) is not None:
            return {"scheduler": None, **model.preset_defaults()}
        preset = get_preset(FEW_STEP_PRESET)
        scheduler = next(name for name, (cls, extra, _) in SCHEDULERS.items()
                         if cls == preset.scheduler and not extra)
        return {"scheduler": scheduler, "steps": preset.steps, "guidance_scale": preset.guidance_scale}

    @staticmethod
    def few_step_fields() -> list[str]:
        return ["scheduler", "steps", "guidance_scale"]

    def few_step_values(self, on: bool) -> list[Any]:
        """The settings values with the toggle on (see :meth:`few_step`) or off (the declared defaults)."""
        values = self.few_step()
        defaults = GenerationSettings.model_fields
        return [values[name] if on else defaults[name].default for name in self.few_step_fields()]

    def few_step_at_start(self) -> bool:
        """The toggle starts on when the model was loaded for few steps (a preset, or an LCM LoRA)."""
        model = self.get_model()
        lora = getattr(model, "lora", None)
        return getattr(model, "preset", None) is not None or (bool(lora) and "lcm" in str(lora).lower())

    def few_step_warning(self, on: bool) -> str | None:
        """What to tell a user who turns the toggle on while no few-step model is loaded (else None)."""
        if not on or self.few_step_at_start():
            return None
        return ("Warning: no few-step model is loaded, so these few LCM steps give blurred, unfinished pictures. "
                "Start the UI with a few-step preset (`instantid ui --preset lcm-lora`, lightning-4step, ...) or "
                "an LCM LoRA (`--lora`), or turn this off.")

    @staticmethod
    def few_step_info() -> str:
        return ("Few steps for a model loaded with a few-step preset (`instantid ui --preset lcm-lora`, "
                "lightning-4step, ...): its sampler, steps and guidance; without one, the LCM-LoRA values (then "
                "load that LoRA). On when such a model is loaded; off: back to the defaults.")

    def notice(self) -> str:
        model = self.get_model()
        lines = [self.demo_notice] if self.demo() else []
        preset = getattr(model, "preset", None)
        if preset is not None:
            lines.append(f"Few-step preset loaded: `{preset.name}` ({preset.steps} steps, guidance "
                         f"{preset.guidance_scale}).")
        if getattr(model, "lora", None):
            lines.append(f"LoRA loaded: `{model.lora}`.")
        return "\n\n".join(lines)

    def guard(self, fn: Callable[..., Any], job: bool = False) -> Callable[..., Any]:
        """User errors become one ``gr.Error`` line and one log line; anything else is a bug, not the user's
        doing: its traceback is logged under an id and the UI says "internal error <id>"
        (:mod:`instantid.internal_errors`), and stays up.

        ``job=True`` (the handlers that submit a job): gradio also hands over its request, and the handler runs
        as that :class:`Caller` (the signed-in name, the browser's address)."""
        import gradio as gr

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except InstantIDError as exc:
                log.warning("web UI: %s", exc)
                raise gr.Error(str(exc), print_exception=False) from None
            except Exception as exc:
                incident = report(exc, log, f"web UI {getattr(fn, '__name__', 'handler')}")
                raise gr.Error(incident.line(), print_exception=False) from None

        if not job:
            return wrapper

        def as_caller(request: gr.Request, *args: Any, **kwargs: Any) -> Any:
            client = getattr(getattr(request, "client", None), "host", None) or "unknown"
            with calling_as(Caller(getattr(request, "username", None) or None, client)):
                return wrapper(*args, **kwargs)

        # gradio passes its request to a first parameter annotated gr.Request (the annotation as an object, so
        # no string needs resolving), then the handler's own arguments (its gr.Progress default included).
        signature = inspect.signature(fn)
        request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
        as_caller.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[request, *signature.parameters.values()])
        as_caller.__annotations__ = {"request": gr.Request}
        as_caller.__name__ = as_caller.__qualname__ = getattr(fn, "__name__", "run")
        return as_caller
