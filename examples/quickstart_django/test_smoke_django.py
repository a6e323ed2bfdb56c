"""Smoke test of the Django quickstart: ``manage.py check`` and ``migrate``, then the ``/demo``
answer through Django's test client. No server, no Redis.

Run it with ``pytest examples/quickstart_django/test_smoke_django.py``. Django is configured once per
process, so each check runs in a child process with the quickstart's settings.
"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(tmp_path: Path, *args: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BALDUR_")},
           "QUICKSTART_DB": str(tmp_path / "db.sqlite3"), "DJANGO_SETTINGS_MODULE": "quickstart.settings"}
    done = subprocess.run([sys.executable, *args], cwd=HERE, env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_check_and_migrate_pass(tmp_path: Path) -> None:
    assert "no issues" in run(tmp_path, "manage.py", "check")
    run(tmp_path, "manage.py", "migrate", "--verbosity", "0")


def test_demo_answers_and_an_open_breaker_answers_503(tmp_path: Path) -> None:
    out = run(tmp_path, "-c", """
import json
import django
django.setup()
from django.test import Client
import baldur
client = Client(SERVER_NAME="localhost")
ok = client.get("/demo")
print(ok.status_code, json.loads(ok.content))
baldur.breaker("demo").open()
refused = client.get("/demo")
print(refused.status_code, refused["Content-Type"], int(refused["Retry-After"]) >= 1)
baldur.reset()
print(client.get("/demo").status_code)
""")
    assert out.splitlines() == ["200 {'status': 'ok', 'service': 'demo'}",
                                "503 application/problem+json True",
                                "200"]


def test_the_admin_mount_answers_by_the_users_group(tmp_path: Path) -> None:
    run(tmp_path, "manage.py", "migrate", "--verbosity", "0")
    out = run(tmp_path, "-c", """
import json
import django
django.setup()
from django.contrib.auth.models import Group, User
from django.test import Client
anonymous = Client(SERVER_NAME="localhost").get("/baldur/api/v1/breakers")
print(anonymous.status_code, anonymous["Content-Type"])
viewer = User.objects.create_user("vera", password="pw")
viewer.groups.add(Group.objects.get(name="baldur_viewer"))
client = Client(SERVER_NAME="localhost")
client.force_login(viewer)
breakers = client.get("/baldur/api/v1/breakers")
print(breakers.status_code, [b["name"] for b in json.loads(breakers.content)["breakers"]])
print(client.get("/baldur/api/v1/audit").status_code)
""")
    assert out.splitlines() == ["401 application/problem+json", "200 ['demo']", "403"]
