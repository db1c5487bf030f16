"""A shared DVC remote, end to end: S3 through dvc-s3, against a real S3-compatible server on localhost.

The server is moto's (``moto_server``, a separate process speaking the S3
HTTP API), started by the fixture; nothing leaves the machine. One clone of a
tiny DVC project pushes, a second clone pulls, and there ``dvc status`` and
``dvc repro`` have nothing to do: what a teammate does with the README's
"shared remote" commands.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
BUCKET = "brainmri-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on a free localhost port, with one empty bucket; skipped if it cannot start."""
    server = BIN / "moto_server"
    if not server.exists():
        pytest.skip(f"{server} not installed (pip install -e '.[dev]')")
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.skip(f"moto_server did not start on port {port} (see {log.name})")
        time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)
    yield endpoint
    process.terminate()
    process.wait(timeout=10)
    log.close()


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ["PATH"], **CREDENTIALS}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def make_tiny_project(repo: Path, endpoint: str) -> None:
    """A git + DVC repo with one tracked input, one stage, and the S3 remote as its default, as the README says."""
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "ci@example.invalid"], repo)
    run(["git", "config", "user.name", "ci"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    (repo / "scans.txt").write_text("glioma\nmeningioma\npituitary\n")
    run(["dvc", "add", "-q", "scans.txt"], repo)
    script = "import pathlib; pathlib.Path('labels.txt').write_text(pathlib.Path('scans.txt').read_text().upper())"
    run(
        ["dvc", "stage", "add", "-q", "-n", "labels", "-d", "scans.txt", "-o", "labels.txt", f'python -c "{script}"'],
        repo,
    )
    run(["dvc", "repro", "-q"], repo)
    run(["dvc", "remote", "add", "-d", "shared", f"s3://{BUCKET}/store"], repo)
    run(["dvc", "remote", "modify", "shared", "endpointurl", endpoint], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)


def test_push_from_one_clone_pull_into_another(s3_endpoint, tmp_path):
    import boto3

    origin = tmp_path / "origin"
    make_tiny_project(origin, s3_endpoint)
    run(["dvc", "push", "-q"], origin)
    stored = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials()).list_objects_v2(Bucket=BUCKET)
    assert stored.get("KeyCount", 0) == 2, stored.get("Contents")  # the input and the stage's output

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    shutil.rmtree(origin)  # the clone can only get the data from the server now
    assert not (clone / "labels.txt").exists()
    run(["dvc", "pull", "-q"], clone)
    assert (clone / "labels.txt").read_text() == "GLIOMA\nMENINGIOMA\nPITUITARY\n"
    assert "Data and pipelines are up to date." in run(["dvc", "status"], clone)
    assert "Running stage" not in run(["dvc", "repro"], clone)
    assert "in sync" in run(["dvc", "status", "--cloud"], clone)  # nothing the clone has is missing on the server
