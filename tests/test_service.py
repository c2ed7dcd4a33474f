"""The service as a real process on loopback: auth on every route, path safety, Host guard,
job control, crash recovery and a property-based fuzz of the API."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import run_cli, tiny_pretrain_recipe

from backend.service.client import BackendError, Client, start_backend


def _shutdown(proc, client: Client) -> None:
    """Stop the service and kill any worker it left running (workers outlive services by design)."""
    for job in client.jobs(state="running"):
        full = client.job(job["id"])
        if full["pid"]:
            try:
                os.killpg(os.getpgid(full["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass
    client.close()
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def backend(shapes_project: Path, tmp_path_factory):
    proc, client = start_backend(shapes_project, log_path=tmp_path_factory.mktemp("svc") / "service.log")
    yield proc, client
    _shutdown(proc, client)


@pytest.fixture
def own_project(tmp_path: Path) -> Path:
    """A small project of its own (one service per project: it cannot share the module's)."""
    run_cli("world", "export", str(tmp_path / "w"), "--n", "60", "--resolution", "32x32", "--no-subject", check=True)
    run_cli("project", "init", str(tmp_path / "p"), check=True)
    run_cli("import", str(tmp_path / "w"), "--project", str(tmp_path / "p"), "--dataset", "shapes", check=True)
    return tmp_path / "p"


def test_a_second_service_for_the_same_project_is_refused(backend, shapes_project: Path):
    out = run_cli("serve", "--project", str(shapes_project), timeout=60)
    assert out.returncode == 2 and f"signal-backend (pid {backend[0].pid}) already serves" in out.stderr


def _openapi(client: Client) -> dict:
    return client.get("/api/openapi.json")


def _fill(path: str) -> str:
    return path.replace("{job_id}", "1").replace("{item_id}", "1").replace("{model_id}", "1").replace("{cid}", "1") \
        .replace("{digest}", "0" * 64).replace("{name}", "shapes").replace("{kind}", "pretrain").replace("{action}", "stop") \
        .replace("{path}", "runs/x.txt")


def test_the_client_knows_the_api_it_talks_to(backend):
    """The service reports its version and API schema hash; the client in this tree expects exactly
    that hash (change a route, update ``client.API_SCHEMA``), and a different one reads as a clear
    mismatch naming both sides."""
    from backend import __version__
    from backend.service.client import API_SCHEMA, incompatibility

    info = backend[1].info()
    assert info["version"] == __version__ and info["api_schema"] == API_SCHEMA, info["api_schema"]
    assert incompatibility(info, "0.1.0") is None
    msg = incompatibility({**info, "api_schema": "feedfacecafe", "version": "9.9"}, "0.1.0")
    assert msg is not None and "feedfacecafe" in msg and API_SCHEMA in msg and "9.9" in msg


def test_every_route_refuses_missing_and_wrong_tokens(backend):
    _, client = backend
    schema = _openapi(client)
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
    assert len(routes) >= 20
    routes.append(("GET", "/api/openapi.json"))
    for method, path in routes:
        url = client.url + _fill(path)
        assert httpx.request(method, url).status_code == 401, (method, path)
        bad = httpx.request(method, url, headers={"Authorization": "Bearer wrong-token"})
        assert bad.status_code == 403, (method, path, bad.status_code)
        basic = httpx.request(method, url, headers={"Authorization": "Basic " + client.token})
        assert basic.status_code in (401, 403), (method, path)


def test_host_header_must_be_the_bound_host(backend):
    _, client = backend
    ok = httpx.get(client.url + "/api/health", headers={"Authorization": f"Bearer {client.token}"})
    assert ok.status_code == 200
    for host in ("evil.example", "192.168.1.10:8000", f"attacker.test:{client.url.rsplit(':', 1)[1]}"):
        r = httpx.get(client.url + "/api/health", headers={"Authorization": f"Bearer {client.token}", "Host": host})
        assert r.status_code == 403, host


def test_no_route_serves_files_outside_the_project(backend, shapes_project: Path, tmp_path: Path):
    _, client = backend
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    link = shapes_project / "exports" / "escape"  # the test file's shared project: the link goes again at the end
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(tmp_path)
    try:
        _no_route_escapes(client, shapes_project, secret)
    finally:  # tmp_path goes when the test passes: a dangling link left behind breaks every later copy of the project
        link.unlink(missing_ok=True)
        (shapes_project / "exports" / "note.txt").unlink(missing_ok=True)


def _no_route_escapes(client, shapes_project: Path, secret: Path) -> None:
    attempts = [
        "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd", "runs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "exports/escape/secret.txt", "%252e%252e/etc/passwd", "images/..%5c..%5cetc%5cpasswd", str(secret).lstrip("/"),
    ]
    raw = httpx.Client(base_url=client.url, headers={"Authorization": f"Bearer {client.token}"})
    for a in attempts:
        r = raw.get("/api/files/" + a)
        assert r.status_code in (403, 404), (a, r.status_code)
        assert b"top secret" not in r.content and b"root:" not in r.content
    r = raw.get("/api/files/project.db")
    assert r.status_code == 403
    too_long = "\u1e70\u033a" * 120  # a name over the file system's 255 bytes (the fuzzer found it answered 500)
    assert raw.get(f"/api/files/{too_long}").status_code == 404 and raw.get(f"/api/files/exports/{too_long}/x").status_code == 404
    for bad in ("../" * 3 + "etc", "zz" * 32, "0" * 63):
        assert raw.get(f"/api/images/{bad}").status_code in (400, 404)
    (shapes_project / "exports" / "note.txt").write_text("inside")
    assert raw.get("/api/files/exports/note.txt").text == "inside"


def test_recipe_validation_and_bad_job_requests(backend):
    _, client = backend
    res = client.validate_recipe('kind = "pretrain"\n[optim]\nlr = -1\nbatchsize = 3\n')
    assert not res["valid"]
    assert {i["path"] for i in res["issues"]} == {"optim.lr", "optim.batchsize"}
    with pytest.raises(BackendError) as info:
        client.create_job('kind = "pretrain"\n[optim]\nlr = -1\n')
    assert info.value.status == 422 and info.value.detail["issues"][0]["path"] == "optim.lr"
    with pytest.raises(BackendError) as info:
        client.control(99999, "stop")
    assert info.value.status == 404


def test_a_real_family_recipe_gets_its_memory_plan_and_launch_and_an_incomplete_folder_is_refused(backend, tmp_path: Path):
    """What the wizard's compute page shows for a real model (from the folder's headers and configs),
    and the refusal a job request for a folder without its T5 gets, before any job exists."""
    import shutil

    from backend.models.tiny_folders import build_tiny_folder

    _, client = backend
    folder = build_tiny_folder(tmp_path / "sd3", "sd3")
    recipe = (f'kind = "pretrain"\n[model]\nfamily = "sd3"\ninit = "{folder}"\n[allocation.shift]\nkind = "fixed"\nalpha = 3.0\n'
              '[[curriculum]]\nbuckets = [[64, 64]]\n[compute]\nprocesses = 2\n')
    est = client.estimate_recipe(recipe)
    mem = est["memory"]
    weights = sum(b for what, b in mem["held"] if what.startswith("transformer"))
    assert weights == 4 * est["params"] and 100_000 < est["params"] < 200_000  # float32 copy of the tiny transformer, counted from its header
    assert mem["fits"] and mem["available"] > mem["bytes"]
    assert any(what.startswith("activations (batch 32, 397 tokens") for what, _ in mem["held"])  # 8x8 image tokens + 77 CLIP + 256 T5
    assert est["launch"]["what"].startswith("2 processes on this machine, data parallel (DDP)")
    assert "--num_processes 2" in est["launch"]["command"]
    lora = client.estimate_recipe(f'kind = "personalize"\nmodel = "{folder}"\n[sampler]\nwidth = 64\nheight = 64\n')["memory"]
    assert lora["fits"] and not any(what.startswith(("gradients", "AdamW")) for what, _ in lora["held"])  # a LoRA: the frozen weights only
    dyn = {"timesteps": {"kind": "logit_normal"}, "shift": {"kind": "dynamic"}, "buckets": [[64, 64]]}
    tokens = {name: client.post("/api/allocation/density", {**dyn, "model": model})["curves"]["64x64"]["tokens"]
              for name, model in (("sd3", {"family": "sd3", "init": str(folder)}), ("patch4", {"family": "mmdit", "patch": 4}),
                                  ("unet", {"family": "unet"}))}
    assert tokens == {"sd3": 64, "patch4": 16, "unet": 256}  # the tiny SD3's 4x VAE and 2x2 patches; 4 x 4 px; a UNet's latent pixels
    shutil.rmtree(folder / "text_encoder_3")
    jobs_before = len(client.jobs())
    with pytest.raises(BackendError) as info:
        client.create_job(recipe)
    assert info.value.status == 422 and "text_encoder_3/ is missing" in info.value.detail["issues"][0]["reason"]
    assert len(client.jobs()) == jobs_before


def _wait(pred, timeout=240, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def test_job_lifecycle_events_stop_and_resume(backend, shapes_project: Path):
    _, client = backend
    job = client.create_job(tiny_pretrain_recipe(steps=400, checkpoint_every=5, sample_every=1000, name="svc-stop"), "svc-stop")
    seen: list[dict] = []
    for ev in client.events(job=job["id"], timeout=240):
        seen.append(ev)
        if ev["type"] == "metrics":
            break
    assert any(e["type"] == "job" and e["job"]["state"] == "running" for e in seen)
    _wait(lambda: client.job(job["id"])["step"] >= 10)
    client.control(job["id"], "sample")
    _wait(lambda: client.samples(job["id"]))
    client.control(job["id"], "stop")
    stopped = client.wait_job(job["id"], timeout=120)
    assert stopped["state"] == "stopped" and stopped["resumable"] == 1
    step_at_stop = stopped["step"]
    run_dir = shapes_project / stopped["run_dir"]
    assert (run_dir / "checkpoints" / f"step-{step_at_stop:07d}").exists(), "stop must checkpoint first"
    listed = next(j for j in client.jobs() if j["id"] == job["id"])
    assert listed["size"] == [32, 32] and "recipe" not in listed  # the Playground opens the run at its recipe's size
    client.control(job["id"], "resume")
    _wait(lambda: client.job(job["id"])["step"] > step_at_stop + 2)
    client.control(job["id"], "stop")
    client.wait_job(job["id"], timeout=120)
    log = client.log(job["id"])["text"]
    assert f"resumed from step-{step_at_stop:07d}" in log
    series = client.metrics(job["id"], keys="loss")["loss"]
    steps = [int(s) for s, _ in series]
    # the resumed run went on from the checkpoint: no step logged twice, none skipped (log_every = 2)
    assert len(steps) == len(set(steps)) and set(steps) == set(range(2, max(steps) + 1, 2)) and max(steps) > step_at_stop, steps


def test_sigkilled_worker_leaves_job_interrupted_and_resumable(backend, shapes_project: Path):
    _, client = backend
    job = client.create_job(tiny_pretrain_recipe(steps=400, checkpoint_every=4, sample_every=1000, name="svc-kill"), "svc-kill")
    _wait(lambda: client.job(job["id"])["step"] >= 9)
    row = client.job(job["id"])
    assert os.getpriority(os.PRIO_PROCESS, row["pid"]) >= 5  # jobs yield the CPU to the Studio and the service
    metrics_before = len(client.metrics(job["id"], keys="loss").get("loss", []))
    os.killpg(os.getpgid(row["pid"]), signal.SIGKILL)
    dead = _wait(lambda: (j := client.job(job["id"]))["state"] == "interrupted" and j)
    assert dead["resumable"] == 1 and "signal" in (dead["error"] or "")
    assert len(client.metrics(job["id"], keys="loss")["loss"]) >= metrics_before
    ckpt = Path(shapes_project / dead["run_dir"] / "checkpoints" / "latest").read_text().strip()
    client.control(job["id"], "resume")
    _wait(lambda: ckpt in client.log(job["id"])["text"].split("resumed from ")[-1] if "resumed from" in client.log(job["id"])["text"] else False)
    client.control(job["id"], "stop")
    assert client.wait_job(job["id"], timeout=120)["state"] == "stopped"


def test_killed_service_restarts_with_jobs_and_ratings_intact(own_project: Path, tmp_path: Path):
    shapes_project = own_project
    proc, client = start_backend(shapes_project, log_path=tmp_path / "svc1.log")
    digest = "ab" * 32
    ids = [client.create_pair("a red circle", digest, "cd" * 32, {"seed_a": i})["id"] for i in range(20)]
    for cid in ids[:15]:
        client.submit(cid, "a", rater="tester", decision_ms=300)
    job = client.create_job(tiny_pretrain_recipe(steps=400, checkpoint_every=4, sample_every=1000, name="svc-restart"), "svc-restart")
    _wait(lambda: client.job(job["id"])["step"] >= 6)
    worker_pid = client.job(job["id"])["pid"]
    n_metrics = len(client.metrics(job["id"]).get("loss", []))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # the worker runs on without the service; kill it too, as a crash of the whole machine would
    os.killpg(os.getpgid(worker_pid), signal.SIGKILL)
    time.sleep(0.5)
    proc2, client2 = start_backend(shapes_project, log_path=tmp_path / "svc2.log")
    try:
        kept = client2.ratings(rater="tester")
        assert sorted(r["comparison_id"] for r in kept) == ids[:15]
        jobs = {j["name"]: j for j in client2.jobs()}
        assert jobs["svc-restart"]["state"] == "interrupted" and jobs["svc-restart"]["resumable"] == 1
        assert len(client2.metrics(job["id"]).get("loss", [])) >= n_metrics
    finally:
        _shutdown(proc2, client2)
        client.close()


def test_the_next_job_runs_in_a_warm_standby_worker_that_ends_with_the_service(own_project: Path, tmp_path: Path):
    """After a job, the runner keeps one worker with the libraries loaded; the next job runs in that very
    process (its own process still: killable, with its own log), another is readied once the runner is
    idle, and a killed service leaves no standby behind."""
    import psutil

    proc, client = start_backend(own_project, log_path=tmp_path / "svc.log")
    try:
        assert client.info()["runner"]["standby_pid"] is None  # a service that has run no job spends nothing on one
        first = client.create_job(f'kind = "import"\ndataset = "again"\nsources = ["{tmp_path / "w"}"]\n', "cold")  # any job; a quick one
        assert client.wait_job(first["id"], timeout=240)["state"] == "done"
        standby = _wait(lambda: client.info()["runner"]["standby_pid"])
        assert "--standby" in psutil.Process(standby).cmdline()
        _wait(lambda: os.getpriority(os.PRIO_PROCESS, standby) >= 5)  # it yields the CPU as jobs do (set as it starts)
        second = client.create_job(tiny_pretrain_recipe(steps=400, checkpoint_every=4, sample_every=1000, name="warm"), "warm")
        _wait(lambda: client.job(second["id"])["step"] >= 2)
        assert client.job(second["id"])["pid"] == standby  # it runs in the warm process, not a new one
        client.control(second["id"], "stop")
        stopped = client.wait_job(second["id"], timeout=120)
        assert stopped["state"] == "stopped" and stopped["resumable"] == 1
        log = (own_project / stopped["run_dir"] / "worker.log").read_text()
        assert '"state": "stopped"' in log  # the standby's output went to the job's own log
        refill = _wait(lambda: client.info()["runner"]["standby_pid"])
        assert refill != standby
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        client.close()
    # the standby's pipe closed with the service: it ends by itself, holding no job
    gone, alive = psutil.wait_procs([psutil.Process(refill)], timeout=60)
    assert not alive


def test_undo_returns_the_pair_to_the_queue_and_keeps_the_rating_for_audit(backend):
    _, client = backend
    a = client.create_pair("a blue square", "11" * 32, "22" * 32)
    while (nxt := client.next_pair("undo-tester")) and nxt["id"] != a["id"]:
        client.submit(nxt["id"], "skip", rater="undo-tester")
    rid = client.submit(a["id"], "b", shown_left="b", rater="undo-tester", decision_ms=1200)["id"]
    assert client.next_pair("undo-tester") is None or client.next_pair("undo-tester")["id"] != a["id"]
    undone = client.undo("undo-tester")
    assert undone["id"] == rid and undone["comparison_id"] == a["id"] and undone["undone"]
    assert client.next_pair("undo-tester")["id"] == a["id"]
    assert not client.ratings(rater="undo-tester", choice="b")
    audit = client.ratings(rater="undo-tester", choice="b", include_undone=True)
    assert [r["id"] for r in audit] == [rid] and audit[0]["decision_ms"] == 1200


def test_curation_routes(backend):
    _, client = backend
    res = client.post("/api/datasets/shapes/curate", {"near_threshold": 20, "min_side": 16})
    assert res["items"] == 160 and res["curated"] <= 160
    items = client.items("shapes", limit=3)["items"]
    first = items[0]
    client.post(f"/api/items/{first['id']}/caption", {"caption": "an edited caption"})
    assert client.item(first["id"])["caption"] == "an edited caption"
    assert client.get(f"/api/items/{first['id']}/history")[-1]["new"] == "an edited caption"
    rep = client.post("/api/datasets/shapes/captions/replace", {"find": "circle", "replace": "disc"})
    assert rep["changed"] > 0
    assert client.items("shapes", caption="disc")["total"] == rep["changed"]
    assert client.post("/api/captions/undo", {"batch": rep["batch"]})["restored"] == rep["changed"]
    assert client.items("shapes", caption="disc")["total"] == 0
    mix = client.get("/api/datasets/shapes/mixture")
    assert set(mix) >= {"single_object", "counting"} and abs(sum(m["realised"] for m in mix.values()) - 1) < 1e-9
    assert client.get("/api/datasets/shapes/rejects") == []
    with pytest.raises(BackendError) as info:
        client.post("/api/datasets/nope/curate", {})
    assert info.value.status == 404
    dens = client.post("/api/allocation/density", {"timesteps": {"kind": "logit_normal"}, "shift": {"kind": "per_bucket", "base_resolution": 32},
                                                   "buckets": [[32, 32], [64, 64]]})
    assert dens["curves"]["64x64"]["alpha"] == pytest.approx(2.0) and dens["curves"]["64x64"]["mean_t"] > dens["curves"]["32x32"]["mean_t"]


def test_ratings_export_and_import_through_the_api(backend, shapes_project: Path):
    _, client = backend
    import io

    from PIL import Image

    def png(color: str) -> str:
        from backend.store import Project

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), color).save(buf, "PNG")
        with Project.open(shapes_project) as p:
            return p.put_blob(buf.getvalue(), "png")

    pair = client.create_pair("an exported pair", png("red"), png("blue"), {"a": {"model": "m"}, "b": {"model": "m"}})
    client.submit(pair["id"], "b", shown_left="a", rater="exporter", decision_ms=321)
    report = client.export_ratings("exporter")
    assert report["rows"] == 1 and report["path"].startswith("exports/ratings-")
    data = client.file(report["path"])
    assert client.import_ratings(data, "mine.parquet", rater="importer")["imported"] == 1
    assert [(r["prompt"], r["choice"], r["decision_ms"]) for r in client.ratings(rater="importer")] == [("an exported pair", "b", 321)]
    with pytest.raises(BackendError) as err:
        client.import_ratings(b"not parquet", "bad.parquet")
    assert err.value.status == 422 and "not a readable parquet" in str(err.value.detail) and "cache/uploads" not in str(err.value.detail)
