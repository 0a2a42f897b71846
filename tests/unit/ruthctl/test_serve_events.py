"""`serve`'s events on stderr: one typed ServeEvent, as a JSON line with LOG_FORMAT=json or a line for people."""

from __future__ import annotations

import io
import json

import pydantic
import pytest
from rich.console import Console

from ruthctl.supervise import ServeEvent, stderr_say


def test_an_event_is_one_json_object_with_its_fields_at_the_top_level(capsys: pytest.CaptureFixture[str]) -> None:
    say = stderr_say("json", Console(file=io.StringIO()))
    say("event", ServeEvent(event="tritonserver_restart", reason="wedged: UNLOADING 95s", attempt=1, limit=3))
    say("info", "plain text")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert {k: v for k, v in lines[0].items() if k != "ts"} == {
        "source": "ruthctl serve",
        "level": "event",
        "event": "tritonserver_restart",
        "reason": "wedged: UNLOADING 95s",
        "attempt": 1,
        "limit": 3,
    }
    assert lines[1]["msg"] == "plain text" and "event" not in lines[1]


def test_for_people_an_event_is_its_name_and_fields_on_one_line() -> None:
    out = io.StringIO()
    say = stderr_say("text", Console(file=out, width=200))
    say("event", ServeEvent(event="tritonserver_gave_up", reason="wedged", restarts_last_hour=3))
    assert out.getvalue().strip() == "event tritonserver_gave_up: reason=wedged, restarts_last_hour=3"


def test_an_unknown_event_or_field_is_refused_where_it_is_written() -> None:
    with pytest.raises(pydantic.ValidationError):
        ServeEvent(event="tritonserver_exploded", reason="x")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        ServeEvent(event="tritonserver_restart", reason="x", attempts=1)  # type: ignore[call-arg]
