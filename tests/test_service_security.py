"""A shared server over real HTTP on 127.0.0.1: hashed API keys (401/403), per-key rate and job limits (429),
jobs private to their key, CORS only for configured origins, upload names that never become paths."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _demo import FACE
from _service import serving, until, wait_for

from instantid.errors import InvalidInputError
from instantid.service.auth import KeyRing, hash_key, load_api_keys, new_api_key

ALICE, BOB = "alice-secret-key", "bob-secret-key"
ORIGIN = "https://studio.example"
FAST = {"steps": "2", "width": "64", "height": "64"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}



@pytest.fixture(scope="module")
def server(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    from instantid.service.server import ServerSettings, create_app

    folder = tmp_path_factory.mktemp("secure")
    keys = folder / "keys.txt"
    keys.write_text(f"# name digest limits\nalice {hash_key(ALICE)} rate=2\nbob {hash_key(BOB)} jobs=1\n")
    settings = ServerSettings(out_dir=folder / "jobs", api_key_file=keys, cors_origins=[ORIGIN])
    with serving(create_app(settings, model=model)) as http:
        yield http, folder / "jobs"


def post(client: httpx.Client, key: str | None, name: str = "me.jpg", **headers: str) -> httpx.Response:
    files = [("face", (name, FACE.read_bytes(), "image/jpeg"))]
    return client.post("/v1/generate", files=files, data=FAST, headers={**(auth(key) if key else {}), **headers})


def test_keys_are_required_and_checked(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    missing = post(client, None)
    assert missing.status_code == 401 and "API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = post(client, "alice-secret-kez")
    assert wrong.status_code == 403 and wrong.json()["detail"] == "this API key is not valid"
    assert client.get("/v1/jobs").status_code == 401 and client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": BOB}).status_code == 200
    for open_path in ("/health", "/ready", "/metrics", "/docs"):
        assert client.get(open_path).status_code == 200, open_path
    assert client.get("/ui/config").status_code == 401  # the UI is behind a login with a key (test_service_ui)


def test_rate_limit_per_key_is_429_with_retry_after(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    accepted = [post(client, ALICE) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    limited = post(client, ALICE)
    assert limited.status_code == 429 and "rate limit of 2 submissions per minute" in limited.json()["detail"]
    assert int(limited.headers["retry-after"]) >= 1
    assert post(client, BOB).status_code == 202  # another key has its own bucket
    for response in accepted:
        wait_for(client, response.json()["job_id"], headers=auth(ALICE))


def test_concurrent_job_limit_and_privacy(server: tuple[httpx.Client, Path], model: Any) -> None:
    client, _ = server
    until(lambda: client.get("/v1/jobs", params={"state": "queued"}, headers=auth(BOB)).json()["total"] == 0 and
          client.get("/v1/jobs", params={"state": "running"}, headers=auth(BOB)).json()["total"] == 0,
          60, "bob's earlier jobs")
    with model._lock:  # bob's job cannot finish while the test holds the model
        first = post(client, BOB)
        assert first.status_code == 202
        second = post(client, BOB)
        assert second.status_code == 429 and "already has 1 jobs" in second.json()["detail"]
        job_id = first.json()["job_id"]
        # Another key's job answers exactly as an unknown id does: ids cannot be probed.
        unknown_id = "0" * 32
        for method in ("GET", "DELETE"):
            theirs = client.request(method, f"/v1/jobs/{job_id}", headers=auth(ALICE))
            unknown = client.request(method, f"/v1/jobs/{unknown_id}", headers=auth(ALICE))
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.json()["detail"].replace(job_id, unknown_id) == unknown.json()["detail"]
        mine = client.get("/v1/jobs", headers=auth(ALICE)).json()["jobs"]
        assert job_id not in {j["job_id"] for j in mine} and all(j["job_id"] for j in mine)
    assert wait_for(client, job_id, headers=auth(BOB))["status"] == "done"
    assert client.get(f"/v1/jobs/{job_id}/images/0", headers=auth(ALICE)).status_code == 404


def test_cors_only_for_the_configured_origin(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = client.options("/v1/generate", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = client.options("/v1/generate", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_upload_names_never_become_paths(server: tuple[httpx.Client, Path]) -> None:
    client, jobs = server
    until(lambda: client.get("/v1/jobs", params={"state": "running"}, headers=auth(BOB)).json()["total"] == 0,
          60, "bob's running job")
    response = post(client, BOB, name="../../../escape.jpg")
    assert response.status_code == 202, response.text
    status = wait_for(client, response.json()["job_id"], headers=auth(BOB))
    assert status["metadata"]["references"] == ["escape.jpg"]
    assert not list(jobs.parent.rglob("escape*"))
    folder = jobs / "jobs" / status["job_id"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "image-0.json", "image-0.png", "inputs/prepared"]


def test_key_file_is_hashed_and_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, line = new_api_key("carol")
    assert key not in line and line == f"carol {hash_key(key)}"
    path = tmp_path / "keys.txt"
    path.write_text(f"{line}\ndave {hash_key('other')} jobs=3\n")
    ring = KeyRing(load_api_keys(path))
    compared: list[int] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert ring.identify(key).name == "carol" and ring.identify("other").max_jobs == 3
    assert ring.identify("nope") is None
    assert len(compared) == 6  # every stored digest, every time: no early exit
    for bad in ("carol plaintext-key", "carol sha256:abc", "x sha256:" + "0" * 64 + " rate=fast", ""):
        path.write_text(bad + "\n")
        with pytest.raises(InvalidInputError):
            load_api_keys(path)
