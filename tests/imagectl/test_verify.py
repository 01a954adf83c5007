"""The build-host CA detector used by `imagectl verify` to prove no proxy CA is in an image."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagectl.verify import extra_cas, needles_for, pem_bodies

MOZILLA = Path("/usr/share/ca-certificates/mozilla")


@pytest.fixture(scope="module")
def public_certs() -> list[bytes]:
    certs = sorted(MOZILLA.glob("*.crt")) if MOZILLA.is_dir() else []
    if len(certs) < 3:
        pytest.skip("needs Debian's ca-certificates (/usr/share/ca-certificates/mozilla)")
    return [p.read_bytes() for p in certs]


def test_only_the_site_ca_is_flagged(public_certs: list[bytes]) -> None:
    site_ca, *public = public_certs  # pretend the first one is a proxy CA nobody else ships
    host_bundle = b"".join(public_certs)
    extra = extra_cas(host_bundle, public)
    assert extra == pem_bodies(site_ca)
    needle = needles_for(extra)[0]
    assert needle in site_ca.replace(b"\r", b"")
    assert not any(needle in p for p in public)


def test_no_extra_ca_when_the_host_bundle_is_public(public_certs: list[bytes]) -> None:
    assert extra_cas(b"".join(public_certs), public_certs) == []


def test_pem_parsing_ignores_text_around_certificates(public_certs: list[bytes]) -> None:
    wrapped = b"# comment\n" + public_certs[0] + b"\ntrailing text\n" + public_certs[1]
    assert len(pem_bodies(wrapped)) == 2


def _build(tmp_path: Path, name: str, files: dict[str, bytes]) -> str:
    import subprocess

    ctx = tmp_path / name.replace("/", "_").replace(":", "_")
    ctx.mkdir()
    lines = ["FROM scratch"]
    for fname, data in files.items():
        (ctx / fname).write_bytes(data)
        lines.append(f"COPY {fname} /etc/{fname}")
    lines.append('CMD ["none"]')
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    subprocess.run(["docker", "build", "-q", "-t", name, str(ctx)], check=True, capture_output=True)
    return name


@pytest.mark.docker
def test_check_secrets_catches_a_copied_ca_and_passes_a_clean_image(need_docker: None, tmp_path: Path) -> None:
    import subprocess

    from imagectl.verify import VerifyReport, check_secrets

    host = Path("/etc/ssl/certs/ca-certificates.crt")
    if not host.is_file() or not extra_cas(host.read_bytes(), [p.read_bytes() for p in MOZILLA.glob("*.crt")]):
        pytest.skip("this host's CA bundle has no CA beyond the public ones; nothing to leak")
    leaky = _build(tmp_path, "verifytest/leaky:1", {"proxy-ca.crt": host.read_bytes()})
    clean = _build(tmp_path, "verifytest/clean:1", {"hello.txt": b"hello\n"})
    try:
        bad, good = VerifyReport(leaky), VerifyReport(clean)
        check_secrets(bad, leaky, host)
        check_secrets(good, clean, host)
        files_check = {c.name: c for c in bad.checks}["image files hold no build-host CA"]
        assert not files_check.ok and "proxy-ca.crt" in files_check.detail
        assert good.ok, good.checks
    finally:
        subprocess.run(["docker", "rmi", "-f", leaky, clean], capture_output=True)


def test_size_report_skips_directories_that_are_just_one_child() -> None:
    from imagectl.size import human, pick_largest

    rows = [(100, "/opt"), (99, "/opt/venv"), (60, "/opt/venv/nvidia"), (39, "/opt/venv/torch"), (1, "/opt/x")]
    picked = [p for _, p in pick_largest(rows, 3)]
    assert picked == ["/opt/venv", "/opt/venv/nvidia", "/opt/venv/torch"]
    assert human(6_100_000_000) == "6.1 GB"
