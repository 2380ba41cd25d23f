"""The documents agree with the code: variables, layout, links, and no reference outside the repo.

``app.json``, the README's configuration table and ``webapp/config.py`` must
name the same environment variables; helpers adding a setting keep all three
in step because this test fails otherwise.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from webapp.config import Settings

ROOT = Path(__file__).resolve().parents[1]

#: Set by Heroku, not by app.json: the router's port, and the Redis add-on's URL.
SET_BY_HEROKU = {"PORT", "REDIS_URL"}
#: Development only: a production app must never have it.
DEVELOPMENT_ONLY = {"FIREBASE_AUTH_EMULATOR_HOST"}
#: Read but not set by an operator: another name for a documented variable, or
#: set by the platform; each is named in the meaning of that variable's row.
ALIASES = {"GOOGLE_CLOUD_PROJECT": "FIREBASE_PROJECT_ID", "DYNO": "FORWARDED_FOR_HOPS"}


class _Recorder(dict):
    """An environment that remembers every name the settings ask for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)


def config_variables() -> set[str]:
    """Every environment variable ``Settings.from_environ`` reads."""
    environ = _Recorder({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"})
    Settings.from_environ(environ)
    return environ.asked


def readme_table() -> tuple[set[str], str]:
    """The variables in the first column of the README's configuration table, and the table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names: set[str] = set()
    for row in rows:
        first = row.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return names, "\n".join(rows)


def app_json() -> dict:
    return json.loads((ROOT / "app.json").read_text())


def test_config_readme_and_app_json_name_the_same_variables() -> None:
    read = config_variables()
    documented, table = readme_table()
    assert documented, "no configuration table found in the README"
    aliases = {name for name in read if name in ALIASES}
    for alias in aliases:
        assert f"`{alias}`" in table, f"{alias} is read but the README table never names it"
    assert read - aliases == documented, (
        f"read by webapp/config.py, not in the README: {sorted(read - aliases - documented)}; "
        f"in the README table but never read: {sorted(documented - read)}"
    )
    in_app_json = set(app_json()["env"])
    expected = documented - SET_BY_HEROKU - DEVELOPMENT_ONLY
    assert in_app_json == expected, (
        f"missing from app.json: {sorted(expected - in_app_json)}; "
        f"in app.json but not a setting: {sorted(in_app_json - expected)}"
    )


def test_app_json_describes_a_working_heroku_app() -> None:
    app = app_json()
    plans = [addon["plan"] if isinstance(addon, dict) else addon for addon in app["addons"]]
    assert any(plan.startswith("heroku-redis:") for plan in plans), "REDIS_URL needs the add-on"
    for name, spec in app["env"].items():
        assert spec.get("description", "").strip(), f"{name} has no description"
    for secret in ("EVENTS_API_KEY", "VAPI_WEBHOOK_SECRET"):
        assert app["env"][secret].get("generator") == "secret", f"{secret} must be generated"
    assert app["env"]["FIREBASE_PROJECT_ID"].get("required") is True
    # The buildpack would otherwise pick several workers, which breaks long-polling.
    assert app["env"]["WEB_CONCURRENCY"]["value"] == "1"
    # Heroku Redis's certificate is self-signed.
    assert app["env"]["REDIS_TLS_VERIFY"]["value"] == "false"
    # Every value app.json sets must be one the settings accept.
    values = {name: spec["value"] for name, spec in app["env"].items() if "value" in spec}
    values.update({"FIREBASE_PROJECT_ID": "demo-project", "REDIS_URL": "rediss://h:6379"})
    settings = Settings.from_environ(values)
    assert settings.redis_url == "rediss://h:6379?ssl_cert_reqs=none"
    assert app["environments"]["review"]["addons"], "review apps need Redis too"


def test_python_version_file_names_a_supported_python() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.(1[1-9])", version), version


def test_environment_is_read_only_in_config() -> None:
    """A variable read anywhere else would escape the table and app.json."""
    offenders = []
    for path in (ROOT / "webapp").rglob("*.py"):
        if path.name == "config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"os\.environ(?!\.setdefault)|os\.getenv", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "read settings in webapp/config.py:\n" + "\n".join(offenders)


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in out if (ROOT / name).exists()]


#: Documents a user of this repository does not have (built up so this file does not match).
OUTSIDE = [
    ".." + "/shared", "SP" + "EC §", "SP" + "EC section", "STACK" + "-NOTES", "seed" + "/websocket"
]


def test_nothing_points_outside_the_repository() -> None:
    hits = []
    for path in tracked("*.md", "*.py", "*.js", "*.html", "*.txt", "*.toml", "*.ini", "*.json"):
        text = path.read_text(errors="replace")
        for needle in OUTSIDE:
            for number, line in enumerate(text.splitlines(), 1):
                if needle in line:
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "point at docs/ in this repository instead:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_relative_links_resolve(document: str) -> None:
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    text = path.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md":
            anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{document}: broken links {broken}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```text", 1)[1].split("```", 1)[0].strip().splitlines()


def test_readme_layout_lists_what_is_there() -> None:
    """Every path in the layout block exists, and every module and document is listed.

    A line is ``path[, sibling...]  description``; an indented line continues
    the description above. A single folder's description may name files in it.
    """
    entries: list[tuple[str, str]] = []
    for line in layout_block():
        if not line.strip():
            continue
        if line.startswith(" ") and entries:
            left, described = entries[-1]
            entries[-1] = (left, f"{described} {line.strip()}")
        else:
            left, _, described = line.partition("  ")
            entries.append((left.strip(), described.strip()))
    named: set[Path] = set()
    for left, described in entries:
        paths = [p.strip() for p in left.split(",") if p.strip()]
        first = ROOT / paths[0]
        named.add(first)
        for sibling in paths[1:]:
            named.add(first.parent / sibling if "/" not in sibling.rstrip("/") else ROOT / sibling)
        if len(paths) == 1 and paths[0].endswith("/"):
            for item in re.findall(r"\b([\w-]+\.(?:py|md|js|html|css)|[\w-]+/)", described):
                named.add(first / item)
    named = {p.resolve() for p in named}
    missing = sorted(str(p.relative_to(ROOT)) for p in named if not p.exists())
    assert not missing, f"the README's layout names paths that do not exist: {missing}"
    expected = {
        *(p.resolve() for p in (ROOT / "webapp").glob("*.py") if p.name != "__init__.py"),
        *(p.resolve() for p in (ROOT / "docs").glob("*.md")),
        *(p.resolve() for p in (ROOT / "blueprints").glob("*.py") if p.name != "__init__.py"),
    }
    unlisted = sorted(str(p.relative_to(ROOT)) for p in expected - named)
    assert not unlisted, f"add these to the README's layout block: {unlisted}"


def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    commands = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
        capture_output=True, text=True, check=True,
    ).stdout
    assert "-r requirements.txt" in commands
    assert "requirements-dev" not in commands
    tests = subprocess.run(
        ["make", "-n", "test", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
        capture_output=True, text=True, check=True,
    ).stdout
    assert "-r requirements-dev.txt" in tests


def test_readme_names_exactly_what_make_run_sets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    defaults = dict(re.findall(r"(\w+)=\$\$\{\1:-([^}]+)\}", makefile))
    assert "FIREBASE_AUTH_EMULATOR_HOST" in defaults
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### What `make run` sets", 1)[1].split("\n#", 1)[0]
    shown = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, re.M))
    assert shown == defaults
    # The start-up log may show these values because they are public.
    from webapp.config import MAKE_RUN_DEFAULTS

    assert {k: v for k, v in defaults.items() if k in MAKE_RUN_DEFAULTS} == MAKE_RUN_DEFAULTS
