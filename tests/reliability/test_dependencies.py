"""No known-vulnerable release of torch, transformers, gradio, peft or datasets is installed or allowed.

    python -m pytest tests/reliability/test_dependencies.py -q

Two checks: `pip-audit` over the installed set (needs PyPI's vulnerability data), and an offline table of the
advisories that matter most to a fine-tuning tool, checked against what is installed and against the lower
bounds in pyproject.toml, so a CI without network still catches a floor that admits a vulnerable release.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

# package -> [(first fixed version, advisory)]; every release below the fixed one is vulnerable
ADVISORIES = {
    "torch": [("2.6.0", "CVE-2025-32434: torch.load(weights_only=True) can still run code")],
    "transformers": [
        ("4.48.0", "CVE-2024-11392/11393/11394: code execution through deserialization"),
        ("4.53.0", "CVE-2025-3263/3264/3777/5197/6638: regular-expression denial of service"),
    ],
    "gradio": [
        ("5.0.0", "CVE-2024-47164..47168: path traversal and file read"),
        ("5.11.0", "CVE-2025-23042: access-control bypass of blocked paths"),
        ("5.31.0", "CVE-2025-48889: arbitrary file copy through the flagging route"),
    ],
    "peft": [],
    "datasets": [],
}
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def declared_requirements() -> dict[str, list[SpecifierSet]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = project["dependencies"] + [
        r for extra in project.get("optional-dependencies", {}).values() for r in extra
    ]
    found: dict[str, list[SpecifierSet]] = {}
    for line in lines:
        name, spec = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*([^;]*)", line).groups()
        found.setdefault(name.lower(), []).append(SpecifierSet(spec.strip()))
    return found


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_the_installed_release_has_no_listed_advisory(package):
    try:
        installed = Version(importlib.metadata.version(package))
    except importlib.metadata.PackageNotFoundError:
        return  # an optional extra that is not installed cannot be vulnerable
    bad = [why for fixed, why in ADVISORIES[package] if installed.release < Version(fixed).release]
    assert not bad, f"{package} {installed}: {bad}"


@pytest.mark.parametrize("package", ["torch", "transformers", "gradio", "peft", "datasets"])
def test_the_pyproject_floor_excludes_every_vulnerable_release(package):
    specs = declared_requirements().get(package, [])
    assert specs, f"{package} is not declared in pyproject.toml"
    for fixed, why in ADVISORIES[package]:
        just_below = (
            Version(fixed).release[:-1] + (Version(fixed).release[-1] - 1,)
            if Version(fixed).release[-1]
            else Version(fixed).release[:-2] + (Version(fixed).release[-2] - 1, 99)
        )
        candidate = ".".join(map(str, just_below))
        assert not any(spec.contains(candidate) for spec in specs), f"{package}=={candidate} allowed: {why}"


def test_pip_audit_finds_no_known_vulnerability_in_the_installed_set():
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-f", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout or "{}")
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    if (
        not audited
    ):  # measured here: the index answers 404 for /pypi/<name>/<version>/json, api.osv.dev no DNS
        pytest.skip(
            f"pip-audit could not reach vulnerability data ({len(dependencies)} packages, all skipped: "
            f"{dependencies[0]['skip_reason'] if dependencies else done.stderr.strip()[-200:]})"
        )
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in audited if d.get("vulns")}
    assert not vulnerable
